//! The real services the tests run against, started by `deploy/scripts/*.sh` (the README's test
//! command runs them). Each test works under its own random key prefix and removes its keys
//! when it ends, passed or failed. Also: free loopback ports.

use converge::store::RedisStore;

/// Where the standalone Redis listens; `CONVERGE_TEST_REDIS_URL` overrides.
pub fn redis_url() -> String {
    std::env::var("CONVERGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The address of the standalone Redis ([`redis_url`]'s host and port), for a
/// [`FaultProxy`](crate::fault_proxy::FaultProxy) in front of it.
pub fn redis_address() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs as _;
    let url = redis_url();
    let authority = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .unwrap_or_else(|| panic!("a host:port in the test Redis URL {url}"))
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

/// A loopback address with a port free right now (for an admin endpoint, say).
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("a free port")
}

/// Deletes every key of the standalone Redis that matches a pattern when dropped, passed or
/// failed (for keys a test's `serve` writes outside a [`TestStore`]).
#[derive(Debug)]
pub struct RedisKeys(String);

impl RedisKeys {
    /// Every key starting with `prefix`.
    pub fn under(prefix: &str) -> Self {
        Self(format!("{prefix}*"))
    }

    /// Every key of the rule fleet `name`.
    pub fn of_fleet(name: &str) -> Self {
        Self(format!("converge:fleet:{{{name}}}:*"))
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(mut connection) =
            redis::Client::open(redis_url()).and_then(|client| client.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&self.0)
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

/// A fresh prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("converge-test:{test}:{:016x}:", rand::random::<u64>())
}

/// How long a test's own reads of the store may take. The test observes; it is not the system
/// under test, so it waits out a machine busy with brokers restarting and parallel tests (the
/// store's 2 s default made `kafka3_` fail on "the store answers: Redis(timed out)" while its
/// three Kafka nodes restarted).
const OBSERVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A store under a unique prefix whose keys are deleted when this is dropped.
#[derive(Debug)]
pub struct TestStore {
    pub store: RedisStore,
}

impl TestStore {
    pub async fn standalone(test: &str) -> Self {
        let url = redis_url();
        let store = RedisStore::connect_with_timeout(&url, &unique_prefix(test), OBSERVER_TIMEOUT)
            .await
            .unwrap_or_else(|error| {
                panic!("Redis at {url} (start it with deploy/scripts/redis.sh): {error}")
            });
        Self { store }
    }

    pub async fn cluster(test: &str) -> Self {
        let urls = redis_cluster_urls();
        let store =
            RedisStore::connect_cluster_with_timeout(&urls, &unique_prefix(test), OBSERVER_TIMEOUT)
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

/// A Redis server of one test's own, on a free loopback port, that the test may kill and
/// restart: writes are appended to a file and fsynced before Redis answers, so a restart
/// brings back every acknowledged write (and an empty script cache).
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    process: Option<std::process::Child>,
    /// Configuration file lines beyond the defaults; their paths relative to `dir`.
    config: Vec<String>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().expect("temp dir"), Vec::new())
    }

    /// A server that requires `password` (`requirepass`) of every client.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(
            tempfile::tempdir().expect("temp dir"),
            vec![format!("requirepass {password}")],
        )
    }

    /// A server speaking only TLS on its port, with a certificate for 127.0.0.1 signed by a
    /// fresh CA (`dir/ca.pem`), the default user off and user `user` with `password`.
    pub fn start_tls(user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl runs (installed by deploy/scripts/redis.sh)");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=converge test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.path().join("san.cnf"), "subjectAltName=IP:127.0.0.1\n")
            .expect("extension file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
            "-out",
            "server.pem",
        ]);
        let config = vec![
            "tls-cert-file server.pem".to_owned(),
            "tls-key-file server.key".to_owned(),
            "tls-ca-cert-file ca.pem".to_owned(),
            "tls-auth-clients no".to_owned(),
            "user default off".to_owned(),
            format!("user {user} on >{password} ~* &* +@all"),
        ];
        Self::start_with(dir, config)
    }

    fn start_with(dir: tempfile::TempDir, config: Vec<String>) -> Self {
        let port = free_loopback_addr().port();
        let mut redis = Self {
            port,
            dir,
            process: None,
            config,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and data, and waits until it answers.
    pub fn restart(&mut self) {
        let tls = self.config.iter().any(|line| line.starts_with("tls-"));
        let port = self.port.to_string();
        let mut lines = vec![
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", self.dir.path().display()),
            "save \"\"".to_owned(),
            "appendonly yes".to_owned(),
            "appendfsync always".to_owned(),
        ];
        if tls {
            lines.push("port 0".to_owned());
            lines.push(format!("tls-port {port}"));
        } else {
            lines.push(format!("port {port}"));
        }
        lines.extend(self.config.iter().cloned());
        let config = self.dir.path().join("redis.conf");
        std::fs::write(&config, lines.join("\n") + "\n").expect("redis.conf written");
        let process = std::process::Command::new("redis-server")
            .arg(&config)
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (install it with deploy/scripts/redis.sh)");
        self.process = Some(process);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A server replicating `primary` (`replicaof`), started like [`PrivateRedis::start`]; it
    /// is a replica until told otherwise (`REPLICAOF NO ONE`: a failover).
    pub fn start_replica_of(primary: &PrivateRedis) -> Self {
        Self::start_with(
            tempfile::tempdir().expect("temp dir"),
            vec![format!("replicaof 127.0.0.1 {}", primary.port)],
        )
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the server.
    pub fn signal(&self, signal: &str) {
        let process = self.process.as_ref().expect("the server runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(process.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL: no shutdown, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
