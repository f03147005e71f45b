-- api-key-rotator schema (SQLite).
--
-- These are the original API Key Rotator's tables and columns, exactly as its GORM
-- AutoMigrate created them, so a database file written by the original opens as it is.
-- Columns this project adds (key health, counters, retry settings) are added to both
-- new and old files by the idempotent migration in src/store/sqlite.rs (ADDED_COLUMNS):
--   proxy_configs: max_retries, retry_on, probe_path, idle_timeout
--   api_keys:      created_at, invalid_reason, invalid_at, cooldown_until, request_count,
--                  success_count, failure_count, consecutive_failures, last_used_at,
--                  last_status, last_error
-- Times we add are Unix milliseconds (integer); created_at/updated_at are RFC 3339 text.

CREATE TABLE IF NOT EXISTS `proxy_configs` (
  `id` integer PRIMARY KEY AUTOINCREMENT,
  `name` text NOT NULL,
  `slug` text NOT NULL,
  `config_type` text NOT NULL,
  `api_key_location` text,
  `api_key_name` text,
  `is_active` numeric DEFAULT true,
  `created_at` datetime,
  `updated_at` datetime,
  `method` text,
  `target_url` text,
  `target_base_url` text,
  `api_format` text DEFAULT "openai_compatible",
  `output_format` text DEFAULT "none"
);
CREATE UNIQUE INDEX IF NOT EXISTS `idx_proxy_configs_name` ON `proxy_configs`(`name`);
CREATE UNIQUE INDEX IF NOT EXISTS `idx_proxy_configs_slug` ON `proxy_configs`(`slug`);
CREATE INDEX IF NOT EXISTS `idx_proxy_configs_config_type` ON `proxy_configs`(`config_type`);

CREATE TABLE IF NOT EXISTS `api_keys` (
  `id` integer PRIMARY KEY AUTOINCREMENT,
  `key_value` text NOT NULL,
  `is_active` numeric DEFAULT true,
  `proxy_config_id` integer,
  CONSTRAINT `fk_proxy_configs_api_keys` FOREIGN KEY (`proxy_config_id`)
    REFERENCES `proxy_configs`(`id`) ON DELETE CASCADE
);
