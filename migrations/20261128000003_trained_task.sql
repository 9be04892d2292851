-- What a trained model does: 'classify' (a class head) or 'localize' (class and box heads).
ALTER TABLE trained_models ADD COLUMN task TEXT NOT NULL DEFAULT 'classify';
