-- Fine-tuned models: the base with its tuned top blocks, an ONNX file in the blob store.
-- NULL for a head trained on the frozen base. Portable SQL (SQLite and PostgreSQL).

ALTER TABLE trained_models ADD COLUMN tuned_base_blob TEXT;
