//! SQLite: the embedded default, one file, nothing to install. WAL mode lets readers run
//! while the single writer commits; migrations live in `migrations/sqlite`.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateDatabase;

use super::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

pub(super) async fn connect(url: &str) -> Result<AnyPool, StoreError> {
    let in_memory = url.contains(":memory:");
    if !in_memory && !sqlx::Any::database_exists(url).await? {
        sqlx::Any::create_database(url).await?;
    }
    let pool = AnyPoolOptions::new()
        // An in-memory database exists per connection, so it must stay on one.
        .max_connections(if in_memory { 1 } else { 8 })
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;").await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
