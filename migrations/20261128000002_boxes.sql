-- Bounding boxes. Portable SQL: it runs unchanged on SQLite and PostgreSQL.
-- bbox is JSON text [x_min, y_min, x_max, y_max] in pixels of the upright image,
-- NULL for an item without a box; task is 'classify' (class folders) or 'localize'
-- (a box dataset). Existing datasets are class-folder ones, hence the default.

ALTER TABLE dataset_items ADD COLUMN bbox TEXT;
ALTER TABLE datasets ADD COLUMN task TEXT NOT NULL DEFAULT 'classify';
