-- api-key-rotator schema (MySQL 8 / MariaDB 10.5+), enterprise build.
--
-- The original API Key Rotator's tables, columns and index names as its GORM AutoMigrate
-- created them on MySQL, so a database written by the original opens as it is. Three
-- differences, each applied to old databases too by the idempotent migration in
-- src/store/mysql.rs (never narrowing anything):
--   * `method` is varchar(100), not varchar(10): the admin API accepts lists such as
--     "GET,POST,PUT";
--   * `target_url` and `target_base_url` are varchar(2048), not varchar(255): the admin
--     API accepts any http(s) URL, and a valid input must not fail on one store only;
--   * `key_value` compares byte for byte (utf8mb4_bin): API keys are case-sensitive, and
--     the default collation would call "sk-ABC" a duplicate of "sk-abc".
-- Columns this project adds (key health, counters, retry settings) are added by the same
-- migration (ADDED_COLUMNS in mysql.rs). Times we add are Unix milliseconds (bigint);
-- created_at/updated_at are datetime(3) in UTC, shown as RFC 3339 in the JSON.
-- Statements are separated by a semicolon at the end of a line.

CREATE TABLE IF NOT EXISTS `proxy_configs` (
  `id` int NOT NULL AUTO_INCREMENT,
  `name` varchar(100) NOT NULL,
  `slug` varchar(100) NOT NULL,
  `config_type` varchar(50) NOT NULL,
  `api_key_location` varchar(50) DEFAULT NULL,
  `api_key_name` varchar(100) DEFAULT NULL,
  `is_active` tinyint(1) DEFAULT 1,
  `created_at` datetime(3) DEFAULT NULL,
  `updated_at` datetime(3) DEFAULT NULL,
  `method` varchar(100) DEFAULT NULL,
  `target_url` varchar(2048) DEFAULT NULL,
  `target_base_url` varchar(2048) DEFAULT NULL,
  `api_format` varchar(50) DEFAULT 'openai_compatible',
  `output_format` varchar(50) DEFAULT 'none',
  PRIMARY KEY (`id`),
  UNIQUE KEY `idx_proxy_configs_name` (`name`),
  UNIQUE KEY `idx_proxy_configs_slug` (`slug`),
  KEY `idx_proxy_configs_config_type` (`config_type`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `api_keys` (
  `id` int NOT NULL AUTO_INCREMENT,
  `key_value` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  `is_active` tinyint(1) DEFAULT 1,
  `proxy_config_id` int DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `fk_proxy_configs_api_keys` (`proxy_config_id`),
  CONSTRAINT `fk_proxy_configs_api_keys` FOREIGN KEY (`proxy_config_id`)
    REFERENCES `proxy_configs` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
