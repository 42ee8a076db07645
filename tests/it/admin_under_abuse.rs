//! Issue 24, item 9: the admin endpoint under abuse, against a real `converge serve` on the
//! real Kafka and Redis.
//! - 200 concurrent 16 MiB uploads refused by their head (no token, a foreign `Origin`, over the
//!   size cap) are answered without their bodies being read: the process's peak resident memory
//!   stays under twice its idle resident memory, and every client reads its answer.
//! - SIGTERM with clients attached (one trickling its request head, one an authenticated
//!   upload's body) exits cleanly within the grace period, the offsets committed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use converge::redact::Secret;
use converge_tests::process::Server;
use converge_tests::process::{proc_status_bytes, tail};
use converge_tests::prometheus::scrape;
use converge_tests::served::Served;
use converge_tests::{Convergence, orders};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The log of `serve`, in the setup's directory.
const LOG: &str = "serve.log";

const TOKEN: &str = "wedge-admin-token-0123456789abcdef";

/// `rule.max_component_bytes` in these tests (a quarter of the default, so that 200 uploads
/// stay quick): the uploads are this large.
const UPLOAD_BYTES: usize = 16 << 20;

/// One `serve` into the standalone Redis, with an admin endpoint and its token.
async fn served(test: &str, partitions: i32) -> Served {
    let mut served = Served::new(test, partitions).await.with_admin();
    if let Some(admin) = &mut served.settings.admin {
        admin.token = Some(Secret::new(TOKEN));
    }
    served.settings.rule.max_component_bytes = UPLOAD_BYTES;
    served
}

/// Starts `serve` and waits until `/readyz` answers 200.
async fn start(served: &Served) -> Server {
    let mut server = served.start(LOG);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(exit) = server.exited() {
            panic!("serve exited with {exit}:\n{}", tail(&served.log(LOG)));
        }
        let ready = client
            .get(format!("http://{}/readyz", served.admin()))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "serve not ready in 120 s:\n{}",
            tail(&served.log(LOG))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `head` and then `body_bytes` of body the way a plain client does, reading the answer
/// as it comes and stopping once it has one; answers its status code, or the error.
async fn upload(admin: SocketAddr, head: String, body_bytes: usize) -> Result<u16, String> {
    let stream = TcpStream::connect(admin)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let sending = async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'w'; 64 << 10];
        let mut sent = 0;
        while sent < body_bytes {
            let n = writer
                .write(&chunk[..chunk.len().min(body_bytes - sent)])
                .await?;
            sent += n;
        }
        std::io::Result::Ok(writer)
    };
    let answer = async move {
        let mut read = Vec::new();
        let mut buffer = [0u8; 4096];
        while !read.windows(4).any(|window| window == b"\r\n\r\n") {
            let n = reader
                .read(&mut buffer)
                .await
                .map_err(|error| format!("reading the answer: {error}"))?;
            if n == 0 {
                return Err(format!(
                    "closed before an answer: {:?}",
                    String::from_utf8_lossy(&read)
                ));
            }
            read.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&read);
        text.split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
    };
    let mut sending = std::pin::pin!(sending);
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        status = &mut answer => status,
        // Everything sent (or the server stopped reading and closed): the answer must still
        // be there to read.
        _ = &mut sending => answer.await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_admin_200_refused_16_mib_uploads_keep_memory_under_twice_idle() {
    let served = served("wedge-admin-rss", 1).await;
    let server = start(&served).await;
    let pid = server.id();
    let admin = served.admin();
    // Idle: serving, and the endpoint has answered a few requests already.
    for _ in 0..5 {
        scrape(admin).await.expect("metrics");
    }
    let idle = proc_status_bytes(pid, "VmRSS");
    // From here on VmHWM is the peak of what follows (5: reset the peak resident size).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("the peak reset");

    let head = |extra: &str, length: usize| {
        format!(
            "POST /rule HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/wasm\r\n\
             Content-Length: {length}\r\n{extra}\r\n"
        )
    };
    let mut uploads = Vec::new();
    for n in 0..200 {
        let (head, length, expected) = match n % 4 {
            // No token, a wrong one.
            0 => (head("", UPLOAD_BYTES), UPLOAD_BYTES, 401),
            1 => (
                head("Authorization: Bearer not-the-token\r\n", UPLOAD_BYTES),
                UPLOAD_BYTES,
                401,
            ),
            // The token, from a foreign page.
            2 => (
                head(
                    &format!(
                        "Authorization: Bearer {TOKEN}\r\nOrigin: http://attacker.example\r\n"
                    ),
                    UPLOAD_BYTES,
                ),
                UPLOAD_BYTES,
                403,
            ),
            // The token, over the size cap.
            _ => (
                head(
                    &format!("Authorization: Bearer {TOKEN}\r\n"),
                    UPLOAD_BYTES + 1,
                ),
                UPLOAD_BYTES + 1,
                413,
            ),
        };
        uploads.push(tokio::spawn(async move {
            (expected, upload(admin, head, length).await)
        }));
    }
    let mut answers = Vec::new();
    for upload in uploads {
        answers.push(upload.await.expect("the client's task"));
    }
    let peak = proc_status_bytes(pid, "VmHWM");
    assert!(
        peak < 2 * idle,
        "200 refused uploads of 16 MiB took serve from {} MiB idle to a peak of {} MiB (over \
         twice idle): their bodies were read",
        idle >> 20,
        peak >> 20
    );
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(expected, got)| got.as_ref() != Ok(expected))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of 200 clients did not read their refusal: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Counted like any refusal, and the endpoint still answers.
    let metrics = scrape(admin).await.expect("metrics after the uploads");
    assert_eq!(
        metrics.value("converge_admin_refusals_total{reason=\"no_token\"}")
            + metrics.value("converge_admin_refusals_total{reason=\"bad_token\"}"),
        100.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.value("converge_admin_refusals_total{reason=\"origin\"}"),
        50.0
    );
    server.terminate();
}

/// Connects to `admin` and sends `start`, then one byte of `filler` every 100 ms until the
/// server closes the connection; `attached` is sent once the first trickled bytes are out.
async fn trickle(admin: SocketAddr, start: String, attached: tokio::sync::oneshot::Sender<()>) {
    let mut stream = TcpStream::connect(admin).await.expect("connected");
    stream.write_all(start.as_bytes()).await.expect("sent");
    let mut attached = Some(attached);
    for sent in 0.. {
        if stream.write_all(b"x").await.is_err() {
            return;
        }
        if sent == 3
            && let Some(attached) = attached.take()
        {
            let _ = attached.send(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_admin_sigterm_with_a_trickling_client_exits_with_offsets_committed() {
    let mut served = served("wedge-admin-sigterm", 2).await;
    let stream = orders::generate("order-", 200, 10, 24);
    served.topic.produce(&stream.events).await;
    let server = start(&served).await;
    Convergence::new(&served.redis.store, &stream.expected)
        .within(Duration::from_secs(90))
        .logs(&mut served.dir)
        .wait()
        .await;

    // Two clients attached: one sends its request head a byte at a time, the other an
    // authenticated upload whose body never ends.
    let admin = served.admin();
    let (head_attached, head_ready) = tokio::sync::oneshot::channel();
    let head = tokio::spawn(trickle(
        admin,
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nX-Slow: "),
        head_attached,
    ));
    let (body_attached, body_ready) = tokio::sync::oneshot::channel();
    let body = tokio::spawn(trickle(
        admin,
        format!(
            "POST /rule HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/wasm\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\n"
        ),
        body_attached,
    ));
    head_ready.await.expect("the head trickles");
    body_ready.await.expect("the body trickles");

    // SIGTERM: a clean exit within 30 s (the deployment's grace period is 60 s).
    server.terminate();
    let positions = served.topic.progress(&served.group);
    assert!(
        positions.iter().all(|(committed, end)| committed == end),
        "offsets not committed at the end of every partition: (committed, end) {positions:?}\n{}",
        tail(&served.log(LOG))
    );
    assert_eq!(
        positions.iter().map(|(_, end)| end).sum::<i64>(),
        stream.events.len() as i64
    );
    // The clients were let go.
    for client in [head, body] {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("the client's connection was closed")
            .expect("the client's task");
    }
}
