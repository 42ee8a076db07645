//! The real services the tests run against, started by `deploy/scripts/*.sh` (the README's test
//! command runs them). Each test works under its own random key prefix and removes its keys
//! when it ends, passed or failed.

use converge::redis_store::RedisStore;

/// Where the standalone Redis listens; `CONVERGE_TEST_REDIS_URL` overrides.
pub fn redis_url() -> String {
    std::env::var("CONVERGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Nodes of the Redis Cluster; `CONVERGE_TEST_REDIS_CLUSTER` (comma-separated) overrides.
pub fn redis_cluster_urls() -> Vec<String> {
    std::env::var("CONVERGE_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_owned()
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A fresh prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("converge-test:{test}:{:016x}:", rand::random::<u64>())
}

/// A store under a unique prefix whose keys are deleted when this is dropped.
#[derive(Debug)]
pub struct TestStore {
    pub store: RedisStore,
}

impl TestStore {
    pub async fn standalone(test: &str) -> Self {
        let url = redis_url();
        let store = RedisStore::connect(&url, &unique_prefix(test))
            .await
            .unwrap_or_else(|error| {
                panic!("Redis at {url} (start it with deploy/scripts/redis.sh): {error}")
            });
        Self { store }
    }

    pub async fn cluster(test: &str) -> Self {
        let urls = redis_cluster_urls();
        let store = RedisStore::connect_cluster(&urls, &unique_prefix(test))
            .await
            .unwrap_or_else(|error| panic!("Redis Cluster at {urls:?} (start it with deploy/scripts/redis.sh --cluster): {error}"));
        Self { store }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let store = self.store.clone();
        // Drop may run inside a runtime: clean up from a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(store.delete_all()))
        });
        let _ = cleanup.join();
    }
}
