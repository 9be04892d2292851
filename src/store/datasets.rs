//! Dataset rows: the dataset, its classes, and one item per stored image.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Db, StoreError, from_json, now_ms};
use crate::data::MAX_REPORT_BYTES;

/// The columns of a dataset row. A report over [`MAX_REPORT_BYTES`] (only an older version
/// stored those) is not read at all: it comes back as NULL with its size, and is served as a
/// note saying so.
fn dataset_columns() -> String {
    format!(
        "id, name, created_at, seed, split_train, split_valid, split_test, task, \
         CASE WHEN octet_length(report) > {MAX_REPORT_BYTES} THEN NULL ELSE report END AS report, \
         CAST(octet_length(report) AS BIGINT) AS report_bytes"
    )
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemRecord {
    pub sha256: String,
    pub class_idx: i64,
    pub split: String,
    pub path: String,
    pub width: i64,
    pub height: i64,
    /// `[x_min, y_min, x_max, y_max]` in pixels of the upright image, in a box dataset;
    /// stored as JSON text.
    pub bbox: Option<[f64; 4]>,
}

#[derive(Debug, Clone)]
pub struct NewDataset {
    pub id: String,
    pub name: String,
    /// What the dataset trains: "classify" (class folders) or "localize" (boxes).
    pub task: String,
    pub seed: i64,
    pub splits: [f64; 3],
    pub report: serde_json::Value,
    pub classes: Vec<String>,
    pub items: Vec<ItemRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetRecord {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    /// What the dataset trains: "classify" (class folders) or "localize" (boxes).
    pub task: String,
    pub seed: i64,
    pub splits: [f64; 3],
    pub report: serde_json::Value,
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClassCount {
    pub class_idx: i64,
    pub split: String,
    pub count: i64,
}

/// Rows per multi-row INSERT: 8 parameters each (4 000 a statement) stays under SQLite's
/// (32 766) and PostgreSQL's (65 535) limits.
const INSERT_CHUNK: usize = 500;

fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn dataset_from_row(row: &AnyRow, classes: Vec<String>) -> Result<DatasetRecord, StoreError> {
    Ok(DatasetRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        task: row.try_get("task")?,
        seed: row.try_get("seed")?,
        splits: [row.try_get("split_train")?, row.try_get("split_valid")?, row.try_get("split_test")?],
        report: match row.try_get::<Option<String>, _>("report")? {
            Some(text) => from_json(&text)?,
            None => serde_json::json!({
                "omitted": format!(
                    "the stored report has {} bytes, over the limit of {MAX_REPORT_BYTES}; it is not shown",
                    row.try_get::<i64, _>("report_bytes")?
                )
            }),
        },
        classes,
    })
}

impl Db {
    /// Inserts the dataset, its classes and items in one transaction: all or nothing.
    ///
    /// A report over [`MAX_REPORT_BYTES`] is refused: every listing sends it back.
    pub async fn insert_dataset(&self, dataset: &NewDataset) -> Result<(), StoreError> {
        let report = dataset.report.to_string();
        if report.len() > MAX_REPORT_BYTES {
            return Err(StoreError::Malformed(format!(
                "the dataset report has {} bytes, over the limit of {MAX_REPORT_BYTES}",
                report.len()
            )));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO datasets (id, name, created_at, seed, split_train, split_valid, split_test, report, task) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&dataset.id)
        .bind(&dataset.name)
        .bind(now_ms())
        .bind(dataset.seed)
        .bind(dataset.splits[0])
        .bind(dataset.splits[1])
        .bind(dataset.splits[2])
        .bind(report)
        .bind(&dataset.task)
        .execute(&mut *tx)
        .await?;
        for (idx, name) in dataset.classes.iter().enumerate() {
            sqlx::query("INSERT INTO dataset_classes (dataset_id, idx, name) VALUES ($1, $2, $3)")
                .bind(&dataset.id)
                .bind(idx as i64)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        for chunk in dataset.items.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO dataset_items (dataset_id, sha256, class_idx, split, path, width, height, bbox) \
                 VALUES {}",
                placeholders(chunk.len(), 8)
            );
            let mut query = sqlx::query(&sql);
            for item in chunk {
                query = query
                    .bind(&dataset.id)
                    .bind(&item.sha256)
                    .bind(item.class_idx)
                    .bind(&item.split)
                    .bind(&item.path)
                    .bind(item.width)
                    .bind(item.height)
                    .bind(item.bbox.map(|bbox| serde_json::json!(bbox).to_string()));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        let Some(row) = sqlx::query(&format!("SELECT {} FROM datasets WHERE id = $1", dataset_columns()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let classes = sqlx::query("SELECT name FROM dataset_classes WHERE dataset_id = $1 ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| r.try_get::<String, _>("name"))
            .collect::<Result<Vec<_>, _>>()?;
        dataset_from_row(&row, classes).map(Some)
    }

    /// Every dataset, oldest first; two queries however many there are.
    pub async fn datasets(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        self.datasets_page(i64::MAX, 0).await
    }

    /// At most `limit` datasets after the first `offset`, oldest first; two queries.
    pub async fn datasets_page(&self, limit: i64, offset: i64) -> Result<Vec<DatasetRecord>, StoreError> {
        let page = "SELECT id FROM datasets ORDER BY created_at, id LIMIT $1 OFFSET $2";
        let rows = sqlx::query(&format!(
            "SELECT {} FROM datasets WHERE id IN ({page}) ORDER BY created_at, id",
            dataset_columns()
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let mut classes: HashMap<String, Vec<String>> = HashMap::new();
        for row in sqlx::query(&format!(
            "SELECT dataset_id, name FROM dataset_classes WHERE dataset_id IN ({page}) ORDER BY dataset_id, idx"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?
        {
            classes.entry(row.try_get("dataset_id")?).or_default().push(row.try_get("name")?);
        }
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                dataset_from_row(row, classes.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    pub async fn dataset_counts(&self, id: &str) -> Result<Vec<ClassCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT class_idx, split, COUNT(*) AS n FROM dataset_items WHERE dataset_id = $1 \
             GROUP BY class_idx, split ORDER BY class_idx, split",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ClassCount {
                    class_idx: r.try_get("class_idx")?,
                    split: r.try_get("split")?,
                    count: r.try_get("n")?,
                })
            })
            .collect()
    }

    pub async fn dataset_items(&self, id: &str) -> Result<Vec<ItemRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT sha256, class_idx, split, path, width, height, bbox FROM dataset_items \
             WHERE dataset_id = $1 ORDER BY sha256",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(item_from_row).collect()
    }

    /// A page of a dataset's items, in a stable order (class, split, path), optionally of one
    /// class and one split.
    pub async fn dataset_items_page(
        &self,
        id: &str,
        class_idx: Option<i64>,
        split: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ItemRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT sha256, class_idx, split, path, width, height, bbox FROM dataset_items \
             WHERE dataset_id = $1 AND ($2 < 0 OR class_idx = $2) AND ($3 = '' OR split = $3) \
             ORDER BY class_idx, split, path, sha256 LIMIT $4 OFFSET $5",
        )
        .bind(id)
        .bind(class_idx.unwrap_or(-1))
        .bind(split.unwrap_or(""))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(item_from_row).collect()
    }

    /// One item of a dataset, by its image's hash.
    pub async fn dataset_item(&self, id: &str, sha256: &str) -> Result<Option<ItemRecord>, StoreError> {
        sqlx::query(
            "SELECT sha256, class_idx, split, path, width, height, bbox FROM dataset_items \
             WHERE dataset_id = $1 AND sha256 = $2",
        )
        .bind(id)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?
        .map(item_from_row)
        .transpose()
    }

    /// Deletes the dataset and its rows; returns the image hashes no other dataset uses
    /// (their blobs can go).
    pub async fn delete_dataset(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let orphans = sqlx::query(
            "SELECT sha256 FROM dataset_items i WHERE dataset_id = $1 AND NOT EXISTS \
             (SELECT 1 FROM dataset_items o WHERE o.sha256 = i.sha256 AND o.dataset_id <> $2)",
        )
        .bind(id)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| r.try_get::<String, _>("sha256"))
        .collect::<Result<Vec<_>, _>>()?;
        // Children first: the same order works with and without foreign-key cascades.
        sqlx::query("DELETE FROM dataset_items WHERE dataset_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM dataset_classes WHERE dataset_id = $1").bind(id).execute(&mut *tx).await?;
        let deleted = sqlx::query("DELETE FROM datasets WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(orphans))
    }

    /// Whether any dataset holds an image with this hash.
    pub async fn image_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM dataset_items WHERE sha256 = $1")
            .bind(sha256)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }
}

fn item_from_row(r: AnyRow) -> Result<ItemRecord, StoreError> {
    Ok(ItemRecord {
        sha256: r.try_get("sha256")?,
        class_idx: r.try_get("class_idx")?,
        split: r.try_get("split")?,
        path: r.try_get("path")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        bbox: r.try_get::<Option<String>, _>("bbox")?.as_deref().map(from_json).transpose()?,
    })
}
