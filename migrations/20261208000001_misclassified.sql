-- The test images a succeeded job's model gets wrong (a JSON array), listed by
-- GET /v1/jobs/{id}/misclassified. NULL for jobs that ended otherwise. Portable SQL.

ALTER TABLE jobs ADD COLUMN misclassified TEXT;
