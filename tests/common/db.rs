//! Fresh databases for tests: a SQLite file, and a new PostgreSQL database on the
//! server CI starts (GRAFT_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/test).

use graft::store::Db;
use sqlx::Executor;
use sqlx::any::AnyPoolOptions;

pub fn postgres_admin_url() -> String {
    std::env::var("GRAFT_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A new, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres_url() -> String {
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let name = format!("graft_test_{}", uuid::Uuid::new_v4().simple());
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed (`.ci/run` starts it): {e}"));
    pool.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("graft.db").display())
}

/// Both backends, each freshly migrated: `(label, db)`. Keep `_dir` alive while using them.
pub async fn both_databases(dir: &std::path::Path) -> Vec<(&'static str, Db)> {
    vec![
        ("sqlite", Db::connect(&sqlite_url(dir)).await.unwrap()),
        ("postgres", Db::connect(&fresh_postgres_url().await).await.unwrap()),
    ]
}
