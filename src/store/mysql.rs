//! MySQL / MariaDB: the production store. Creates the database on first start and runs the
//! migrations in `migrations/mysql`.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateDatabase;

use super::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/mysql");

pub(super) async fn connect(url: &str) -> Result<AnyPool, StoreError> {
    if !sqlx::Any::database_exists(url).await? {
        // Two nodes may race to create it; the loser's error is harmless if it now exists.
        if let Err(e) = sqlx::Any::create_database(url).await
            && !sqlx::Any::database_exists(url).await?
        {
            return Err(e.into());
        }
    }
    let pool = AnyPoolOptions::new()
        .max_connections(32)
        .min_connections(2)
        // A dead MySQL must turn into a quick 503, not a request that hangs.
        .acquire_timeout(Duration::from_secs(3))
        // No ping before each use: it doubled the round trips of every statement. A dead
        // connection fails its statement instead, which the callers already handle.
        .test_before_acquire(false)
        .connect(url)
        .await?;
    // Nodes starting together would race on the migrations table; a named lock on the
    // migrating connection makes the others wait and then find the work done.
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT GET_LOCK('switchboard_migrations', 60)").execute(&mut *conn).await?;
    let migrated = MIGRATOR.run(&mut *conn).await;
    sqlx::query("SELECT RELEASE_LOCK('switchboard_migrations')").execute(&mut *conn).await?;
    migrated?;
    Ok(pool)
}

/// Whether InnoDB gives the rows of one multi-row insert consecutive ids: true unless
/// `innodb_autoinc_lock_mode` is 2 ("interleaved"), where concurrent inserts may interleave.
pub(super) async fn consecutive_ids(pool: &AnyPool) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT CAST(@@innodb_autoinc_lock_mode AS SIGNED)").fetch_one(pool).await?;
    Ok(sqlx::Row::try_get::<i64, _>(&row, 0)? < 2)
}
