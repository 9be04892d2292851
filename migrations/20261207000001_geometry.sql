-- How a trained model's images are brought to its base's input size when that is not the
-- base's own resize: "pad" or "stretch" (a localizer sees the whole image). NULL: the
-- base's own. Portable SQL (SQLite and PostgreSQL).

ALTER TABLE trained_models ADD COLUMN geometry TEXT;
