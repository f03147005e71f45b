//! Maps a request path to a [`Route`]. Pure: no I/O, no allocation.
//!
//! Only the path is looked at; methods are checked by each handler, which answers 405
//! with `Allow`. The raw (still percent-encoded) path is used throughout, so `%2F` in a
//! proxied path stays a literal `%2F` and can be refused by the proxy.

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/` and `/index.html`: the admin page.
    Index,
    /// `/assets/<name>`: a file of the admin page.
    Asset(&'a str),
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// An admin API route.
    Admin(AdminRoute<'a>),
    /// `/proxy/<slug>/<rest>`.
    Proxy { slug: &'a str, rest: &'a str },
    /// `/llm/<slug>/<rest>`.
    Llm { slug: &'a str, rest: &'a str },
    /// An unknown path under `/admin`, `/proxy` or `/llm`: JSON 404.
    ApiNotFound,
    /// Any other path: the admin page (history-mode fallback), for GET and HEAD.
    PageFallback,
}

/// The admin API routes. Ids are left as text; handlers parse them (400 on garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute<'a> {
    Login,
    AppConfig,
    Services,
    Service(&'a str),
    ServiceStatus(&'a str),
    ServiceKeys(&'a str),
    ServiceKeysBatch(&'a str),
    Key(&'a str),
    KeyReset(&'a str),
    KeyTest(&'a str),
    Usage,
    Requests,
    ClientKeys,
    ClientKey(&'a str),
    ServiceKeysBulk(&'a str),
    Job(&'a str),
}

/// Routes a raw request path (without the query string).
pub fn route(path: &str) -> Route<'_> {
    if let Some(rest) = path.strip_prefix("/proxy/") {
        return split_slug(rest).map_or(Route::ApiNotFound, |(slug, rest)| Route::Proxy {
            slug,
            rest,
        });
    }
    if let Some(rest) = path.strip_prefix("/llm/") {
        return split_slug(rest)
            .map_or(Route::ApiNotFound, |(slug, rest)| Route::Llm { slug, rest });
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        return admin(rest).map_or(Route::ApiNotFound, Route::Admin);
    }
    match path {
        "/" | "/index.html" => Route::Index,
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/admin" | "/proxy" | "/llm" => Route::ApiNotFound,
        "/favicon.ico" => Route::Asset("favicon.svg"),
        _ => match path.strip_prefix("/assets/") {
            Some(name) => Route::Asset(name),
            None => Route::PageFallback,
        },
    }
}

/// `<slug>[/<rest>]` → (slug, rest). An empty slug is no route.
fn split_slug(s: &str) -> Option<(&str, &str)> {
    let (slug, rest) = first_segment(s);
    (!slug.is_empty()).then_some((slug, rest))
}

/// `a/b/c` → (`a`, `b/c`); without a `/`, (`s`, ``). A plain byte loop: for a path a few
/// dozen bytes long, `split_once('/')` spends more setting up its search than this
/// spends scanning.
pub fn first_segment(s: &str) -> (&str, &str) {
    match s.bytes().position(|b| b == b'/') {
        Some(at) => (&s[..at], &s[at + 1..]),
        None => (s, ""),
    }
}

fn admin(rest: &str) -> Option<AdminRoute<'_>> {
    let mut parts = rest.split('/');
    let route = match (parts.next()?, parts.next(), parts.next(), parts.next()) {
        ("login", None, None, None) => AdminRoute::Login,
        ("app-config", None, None, None) => AdminRoute::AppConfig,
        ("proxy-configs", None, None, None) => AdminRoute::Services,
        ("proxy-configs", Some(id), None, None) => AdminRoute::Service(id),
        ("proxy-configs", Some(id), Some("status"), None) => AdminRoute::ServiceStatus(id),
        ("proxy-configs", Some(id), Some("keys"), None) => AdminRoute::ServiceKeys(id),
        ("proxy-configs", Some(id), Some("keys"), Some("batch")) => {
            AdminRoute::ServiceKeysBatch(id)
        }
        ("proxy-configs", Some(id), Some("keys"), Some("bulk")) => AdminRoute::ServiceKeysBulk(id),
        ("jobs", Some(id), None, None) => AdminRoute::Job(id),
        ("keys", Some(id), None, None) => AdminRoute::Key(id),
        ("keys", Some(id), Some("reset"), None) => AdminRoute::KeyReset(id),
        ("keys", Some(id), Some("test"), None) => AdminRoute::KeyTest(id),
        ("usage", None, None, None) => AdminRoute::Usage,
        ("requests", None, None, None) => AdminRoute::Requests,
        ("client-keys", None, None, None) => AdminRoute::ClientKeys,
        ("client-keys", Some(id), None, None) => AdminRoute::ClientKey(id),
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        use AdminRoute::*;
        let cases = [
            ("/", Route::Index),
            ("/assets/app.js", Route::Asset("app.js")),
            ("/health", Route::Health),
            ("/metrics", Route::Metrics),
            ("/admin/login", Route::Admin(Login)),
            ("/admin/app-config", Route::Admin(AppConfig)),
            ("/admin/proxy-configs", Route::Admin(Services)),
            ("/admin/proxy-configs/7", Route::Admin(Service("7"))),
            (
                "/admin/proxy-configs/7/status",
                Route::Admin(ServiceStatus("7")),
            ),
            (
                "/admin/proxy-configs/7/keys",
                Route::Admin(ServiceKeys("7")),
            ),
            (
                "/admin/proxy-configs/7/keys/batch",
                Route::Admin(ServiceKeysBatch("7")),
            ),
            ("/admin/keys/3", Route::Admin(Key("3"))),
            ("/admin/keys/3/reset", Route::Admin(KeyReset("3"))),
            ("/admin/keys/3/test", Route::Admin(KeyTest("3"))),
            ("/admin/keys/3/test/x", Route::ApiNotFound),
            ("/admin/usage", Route::Admin(Usage)),
            ("/admin/requests", Route::Admin(Requests)),
            ("/admin/nope", Route::ApiNotFound),
            ("/admin", Route::ApiNotFound),
            (
                "/proxy/weather/current/x",
                Route::Proxy {
                    slug: "weather",
                    rest: "current/x",
                },
            ),
            (
                "/proxy/weather",
                Route::Proxy {
                    slug: "weather",
                    rest: "",
                },
            ),
            (
                "/proxy/weather/",
                Route::Proxy {
                    slug: "weather",
                    rest: "",
                },
            ),
            ("/proxy/", Route::ApiNotFound),
            ("/proxy", Route::ApiNotFound),
            (
                "/llm/oai/v1/chat/completions",
                Route::Llm {
                    slug: "oai",
                    rest: "v1/chat/completions",
                },
            ),
            (
                "/llm/oai",
                Route::Llm {
                    slug: "oai",
                    rest: "",
                },
            ),
            ("/administrator", Route::PageFallback),
            ("/some/page", Route::PageFallback),
        ];
        for (path, want) in cases {
            assert_eq!(route(path), want, "{path}");
        }
    }
}
