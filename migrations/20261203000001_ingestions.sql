-- Dataset uploads and imports in progress. While one is live (its heartbeat is recent)
-- blob collection leaves images alone: the ingestion may rely on an image it found
-- stored but has not yet referenced from dataset_items. Portable SQL.

CREATE TABLE ingestions (
    id           TEXT PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
