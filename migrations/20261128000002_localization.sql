-- Localization: boxes on dataset items, and what a dataset or trained model is for.
-- Portable SQL: it runs unchanged on SQLite and PostgreSQL.
-- bbox is JSON text [x_min, y_min, x_max, y_max] in pixels of the upright image, NULL for
-- an item without a box. task is 'classify' (class folders; a class head) or 'localize'
-- (a box dataset; class and box heads). Existing rows are classification ones, hence the defaults.

ALTER TABLE dataset_items ADD COLUMN bbox TEXT;
ALTER TABLE datasets ADD COLUMN task TEXT NOT NULL DEFAULT 'classify';
ALTER TABLE trained_models ADD COLUMN task TEXT NOT NULL DEFAULT 'classify';
