-- graft's schema. Portable SQL: it runs unchanged on SQLite and PostgreSQL.
-- Ids are UUID text, times are Unix milliseconds, structured facts are JSON text.

CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    seed        BIGINT NOT NULL,
    split_train DOUBLE PRECISION NOT NULL,
    split_valid DOUBLE PRECISION NOT NULL,
    split_test  DOUBLE PRECISION NOT NULL,
    report      TEXT NOT NULL
);

CREATE TABLE dataset_classes (
    dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    idx        BIGINT NOT NULL,
    name       TEXT NOT NULL,
    PRIMARY KEY (dataset_id, idx)
);

CREATE TABLE dataset_items (
    dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    sha256     TEXT NOT NULL,
    class_idx  BIGINT NOT NULL,
    split      TEXT NOT NULL,
    path       TEXT NOT NULL,
    width      BIGINT NOT NULL,
    height     BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, sha256)
);
CREATE INDEX dataset_items_by_sha ON dataset_items (sha256);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    dataset_id       TEXT NOT NULL,
    base_model       TEXT NOT NULL,
    model_name       TEXT NOT NULL,
    spec             TEXT NOT NULL,
    state            TEXT NOT NULL,
    failure          TEXT,
    progress         TEXT NOT NULL,
    evaluation       TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    worker           TEXT,
    lease_until      BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX jobs_by_state ON jobs (state, created_at);

CREATE TABLE job_epochs (
    job_id         TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    epoch          BIGINT NOT NULL,
    train_loss     DOUBLE PRECISION NOT NULL,
    train_accuracy DOUBLE PRECISION NOT NULL,
    valid_loss     DOUBLE PRECISION,
    valid_accuracy DOUBLE PRECISION,
    PRIMARY KEY (job_id, epoch)
);

CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    at     BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE trained_models (
    name       TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL UNIQUE,
    base_model TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    classes    TEXT NOT NULL,
    head_blob  TEXT NOT NULL,
    evaluation TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
