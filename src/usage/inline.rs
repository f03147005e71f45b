//! [`InlineStr`]: a short string kept in place, for what a trace and the request log hold
//! of every request (path, model, request id, masked key). The usual ones fit, so a
//! request costs no allocation and its log entry none to free; a longer one goes to the
//! heap whole.

use std::fmt;
use std::ops::Deref;

/// A string of up to `N` bytes kept inline (`N` < 256), a longer one boxed.
#[derive(Clone)]
pub struct InlineStr<const N: usize>(Repr<N>);

/// Private: the inline bytes are UTF-8 only because [`InlineStr::concat`] copies whole
/// `&str`s into them.
#[derive(Clone)]
enum Repr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> InlineStr<N> {
    const FITS: () = assert!(N < 256, "the length is a u8");

    /// `parts` one after another.
    pub fn concat(parts: &[&str]) -> InlineStr<N> {
        let () = Self::FITS;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > N {
            return InlineStr(Repr::Heap(parts.concat().into()));
        }
        let mut bytes = [0; N];
        let mut at = 0;
        for p in parts {
            bytes[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        InlineStr(Repr::Inline {
            len: len as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: the bytes are whole `&str`s copied one after another (`concat`, the
            // only place that makes a `Repr::Inline`), so they are UTF-8.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            Repr::Heap(s) => s,
        }
    }

    /// Whether it is kept inline.
    #[cfg(test)]
    fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl<const N: usize> From<&str> for InlineStr<N> {
    fn from(s: &str) -> InlineStr<N> {
        InlineStr::concat(&[s])
    }
}

impl<const N: usize> Deref for InlineStr<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::InlineStr;

    #[test]
    fn short_strings_stay_inline_and_long_ones_go_whole_to_the_heap() {
        let s: InlineStr<8> = "gpt-4o".into();
        assert!(s.is_inline());
        assert_eq!(&*s, "gpt-4o");
        let exact: InlineStr<8> = "12345678".into();
        assert!(exact.is_inline());
        assert_eq!(&*exact, "12345678");
        let long: InlineStr<8> = "123456789".into();
        assert!(!long.is_inline());
        assert_eq!(&*long, "123456789");
        let joined = InlineStr::<8>::concat(&["ab", "****", "yz"]);
        assert_eq!(&*joined, "ab****yz");
        assert_eq!(
            &*InlineStr::<8>::concat(&["ab", "****", "xyz"]),
            "ab****xyz"
        );
        assert_eq!(&*InlineStr::<4>::concat(&[]), "");
        // Multi-byte characters are copied whole.
        assert_eq!(&*InlineStr::<8>::from("模型名"), "模型名");
    }
}
