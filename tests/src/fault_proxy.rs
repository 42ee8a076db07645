//! A TCP proxy on a free loopback port in front of one upstream address, with faults a test
//! switches on and off while traffic flows: replies held back beyond a client's timeout (the
//! request was served, its answer comes too late), every open connection reset (RST, mid
//! pipeline), replies cut in half and reset, outages that refuse or black-hole connections, and
//! requests of one kind held back (a client's writes stuck on their way while its reads pass).
//! Its counters say which faults really happened, so a test can tell a fault that struck from
//! one that was armed but never met any traffic.
//!
//! ```text
//! let proxy = FaultProxy::start(redis_addr).await;    // serve talks to proxy.url()
//! proxy.delay_replies(0.2, Duration::from_millis(800));
//! proxy.reset_all();
//! proxy.outage(Outage::BlackHole); ...; proxy.restore();
//! proxy.hold_requests_from(b"EVALSHA"); ...; proxy.release_requests();
//! assert!(proxy.stats().replies_delayed > 0);
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How the proxy fails while an outage lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Every open connection is reset, and every new one is accepted and reset at once: a
    /// server that is gone. (Accept-and-reset rather than closing the port: a closed port may
    /// be taken by another socket before the outage ends.)
    Refuse,
    /// Nothing is forwarded either way, on open connections and on new ones, which are accepted
    /// and left unanswered: a network partition, where only the client's timeouts tell. When the
    /// outage ends, what was held goes through, as TCP would deliver it after a partition heals.
    BlackHole,
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections reset because of [`FaultProxy::reset_all`] or an [`Outage::Refuse`].
    pub reset: u64,
    /// Connections reset at once because of an [`Outage::Refuse`], or because the upstream
    /// refused them.
    pub refused: u64,
    /// Connections whose upstream did not accept them (and that were reset).
    pub upstream_refused: u64,
    /// Reply chunks forwarded late, after [`FaultProxy::delay_replies`]'s delay.
    pub replies_delayed: u64,
    /// Reply chunks cut in half, their connection reset ([`FaultProxy::cut_replies`]).
    pub replies_cut: u64,
    /// Times a connection, new or open, waited for a black-hole outage to end.
    pub black_holed: u64,
    /// Request chunks held back by [`FaultProxy::hold_requests_from`] (each with whatever
    /// followed it on its connection).
    pub requests_held: u64,
    /// Bytes forwarded to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded back to clients.
    pub bytes_down: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Down(Outage),
}

/// Faults applied to each reply chunk, each with its own probability.
#[derive(Debug, Clone, Copy, Default)]
struct ReplyFaults {
    delay_share: f64,
    delay: Duration,
    cut_share: f64,
    /// Bytes per second each direction of each connection forwards at most; 0: no limit.
    throttle: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    refused: AtomicU64,
    upstream_refused: AtomicU64,
    replies_delayed: AtomicU64,
    replies_cut: AtomicU64,
    black_holed: AtomicU64,
    requests_held: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

fn count(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    faults: Mutex<ReplyFaults>,
    mode: watch::Sender<Mode>,
    /// The marker of the requests held back, if any ([`FaultProxy::hold_requests_from`]).
    hold: watch::Sender<Option<Vec<u8>>>,
    /// Bumped by `reset_all`: every connection open at that moment resets.
    resets: watch::Sender<u64>,
    counters: Counters,
}

impl Shared {
    fn faults(&self) -> ReplyFaults {
        *self
            .faults
            .lock()
            .expect("the faults' lock is never poisoned")
    }
}

/// The proxy; it stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(ReplyFaults::default()),
            mode: watch::Sender::new(Mode::Pass),
            hold: watch::Sender::new(None),
            resets: watch::Sender::new(0),
            counters: Counters::default(),
        });
        let accepting = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            accepting,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a Redis URL.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Holds back each reply chunk, with probability `share`, for `delay` before forwarding it.
    /// The chunks behind it on the same connection wait too (TCP keeps order). `share` 0 ends
    /// it.
    pub fn delay_replies(&self, share: f64, delay: Duration) {
        let mut faults = self.shared.faults.lock().expect("never poisoned");
        faults.delay_share = share;
        faults.delay = delay;
    }

    /// Forwards at most `bytes_per_second` in each direction of each connection: a link slow
    /// enough that a large pipeline outlasts a client's timeout. 0 ends it.
    pub fn throttle(&self, bytes_per_second: u64) {
        self.shared.faults.lock().expect("never poisoned").throttle = bytes_per_second;
    }

    /// Cuts each reply chunk, with probability `share`, after its first half, and resets the
    /// connection: the request was served, its answer arrives in part or not at all. `share` 0
    /// ends it.
    pub fn cut_replies(&self, share: f64) {
        self.shared.faults.lock().expect("never poisoned").cut_share = share;
    }

    /// Resets (RST) every connection open now, whatever it is doing.
    pub fn reset_all(&self) {
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
    }

    /// Starts an outage (or changes its kind); it lasts until [`FaultProxy::restore`].
    pub fn outage(&self, outage: Outage) {
        self.shared.mode.send_replace(Mode::Down(outage));
    }

    /// Ends an outage: new connections go through again, black-holed ones resume.
    pub fn restore(&self) {
        self.shared.mode.send_replace(Mode::Pass);
    }

    /// Holds back, on every connection, the first request chunk that contains `marker` (ASCII
    /// case ignored: `b"EVALSHA"` for a Redis client's script calls, its writes here) and
    /// everything after it on that connection, while requests before it, and on connections
    /// without it, pass: the client's writes are stuck on their way, and arrive late, when
    /// [`FaultProxy::release_requests`] is called.
    pub fn hold_requests_from(&self, marker: &[u8]) {
        self.shared.hold.send_replace(Some(marker.to_vec()));
    }

    /// Ends [`FaultProxy::hold_requests_from`]: what was held goes on, in order.
    pub fn release_requests(&self) {
        self.shared.hold.send_replace(None);
    }

    /// Ends every fault: no outage, no delays, no cuts, nothing held.
    pub fn heal(&self) {
        self.delay_replies(0.0, Duration::ZERO);
        self.cut_replies(0.0);
        self.release_requests();
        self.restore();
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            accepted: get(&c.accepted),
            open: get(&c.open),
            reset: get(&c.reset),
            refused: get(&c.refused),
            upstream_refused: get(&c.upstream_refused),
            replies_delayed: get(&c.replies_delayed),
            replies_cut: get(&c.replies_cut),
            black_holed: get(&c.black_holed),
            requests_held: get(&c.requests_held),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it closes them all.
        self.accepting.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // An accept error (too many open files, say) is the machine's, not a fault to
                // inject: keep accepting.
                let Ok((client, _)) = accepted else { continue };
                count(&shared.counters.accepted, 1);
                connections.spawn(connection(client, Arc::clone(&shared)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Keeps `open` right however a connection's task ends (aborted with the proxy included).
struct Open<'a>(&'a Counters);

impl<'a> Open<'a> {
    fn new(counters: &'a Counters) -> Self {
        count(&counters.open, 1);
        Self(counters)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes a socket with RST instead of FIN: SO_LINGER 0, then close. Faults are counted before
/// it, so that a client that saw one finds it counted.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// How a proxied connection ended.
enum End {
    /// Both sides closed in order, or one failed (its error mirrored with a reset).
    Closed(std::io::Result<()>),
    /// A reply was cut: reset both sides.
    Cut,
    /// `reset_all` or a refusing outage: reset both sides.
    Reset,
}

async fn connection(mut client: TcpStream, shared: Arc<Shared>) {
    let counters = &shared.counters;
    let _open = Open::new(counters);
    let mut mode = shared.mode.subscribe();
    let mut resets = shared.resets.subscribe();
    // A new connection during an outage: refused, or held unanswered until the outage ends.
    loop {
        match *mode.borrow_and_update() {
            Mode::Pass => break,
            Mode::Down(Outage::Refuse) => {
                count(&counters.refused, 1);
                abort(client);
                return;
            }
            Mode::Down(Outage::BlackHole) => count(&counters.black_holed, 1),
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            _ = resets.changed() => {
                count(&counters.reset, 1);
                abort(client);
                return;
            }
        }
    }
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        count(&counters.upstream_refused, 1);
        count(&counters.refused, 1);
        abort(client);
        return;
    };
    // Small writes (a client's pipeline, the server's replies) must not wait on Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let end = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let requests = pump(
            &shared,
            Direction::Up,
            &mut client_read,
            &mut upstream_write,
        );
        let replies = pump(
            &shared,
            Direction::Down,
            &mut upstream_read,
            &mut client_write,
        );
        let mut refusing = shared.mode.subscribe();
        tokio::select! {
            ended = async { tokio::try_join!(requests, replies) } => match ended {
                Ok(_) => End::Closed(Ok(())),
                Err(PumpError::Cut) => End::Cut,
                Err(PumpError::Io(error)) => End::Closed(Err(error)),
            },
            _ = resets.changed() => End::Reset,
            _ = refusing.wait_for(|mode| *mode == Mode::Down(Outage::Refuse)) => End::Reset,
        }
    };
    match end {
        End::Closed(Ok(())) => {}
        End::Closed(Err(_)) | End::Cut => {
            abort(client);
            abort(upstream);
        }
        End::Reset => {
            count(&counters.reset, 1);
            abort(client);
            abort(upstream);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to upstream: requests.
    Up,
    /// Upstream to client: replies.
    Down,
}

enum PumpError {
    Cut,
    Io(std::io::Error),
}

impl From<std::io::Error> for PumpError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// Waits while a black-hole outage lasts (a refusing one is the connection's to end).
async fn passing(shared: &Shared, mode: &mut watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Pass {
        return;
    }
    count(&shared.counters.black_holed, 1);
    let _ = mode.wait_for(|mode| *mode == Mode::Pass).await;
}

/// Waits while `chunk` (of requests) carries the marker of [`FaultProxy::hold_requests_from`].
async fn held(shared: &Shared, chunk: &[u8]) {
    let carries = |marker: &Option<Vec<u8>>| {
        marker.as_deref().is_some_and(|marker| {
            !marker.is_empty()
                && chunk
                    .windows(marker.len())
                    .any(|window| window.eq_ignore_ascii_case(marker))
        })
    };
    let mut hold = shared.hold.subscribe();
    if !carries(&hold.borrow_and_update()) {
        return;
    }
    count(&shared.counters.requests_held, 1);
    let _ = hold.wait_for(|marker| !carries(marker)).await;
}

/// Forwards one direction until end of stream (then shuts the other side's writing down, as
/// the peer did) or an error.
async fn pump(
    shared: &Shared,
    direction: Direction,
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> Result<(), PumpError> {
    let mut mode = shared.mode.subscribe();
    let mut buffer = vec![0_u8; 64 * 1024];
    let forwarded = match direction {
        Direction::Up => &shared.counters.bytes_up,
        Direction::Down => &shared.counters.bytes_down,
    };
    loop {
        passing(shared, &mut mode).await;
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        // Read before the outage began: held until it ends, like the rest.
        passing(shared, &mut mode).await;
        let chunk = &buffer[..read];
        if direction == Direction::Up {
            held(shared, chunk).await;
        }
        if direction == Direction::Down {
            let faults = shared.faults();
            if faults.cut_share > 0.0 && rand::random_bool(faults.cut_share.min(1.0)) {
                to.write_all(&chunk[..read / 2]).await?;
                to.flush().await?;
                count(&shared.counters.replies_cut, 1);
                return Err(PumpError::Cut);
            }
            if faults.delay_share > 0.0 && rand::random_bool(faults.delay_share.min(1.0)) {
                tokio::time::sleep(faults.delay).await;
                count(&shared.counters.replies_delayed, 1);
            }
        }
        let throttle = shared.faults().throttle;
        if throttle > 0 {
            tokio::time::sleep(Duration::from_secs_f64(read as f64 / throttle as f64)).await;
        }
        to.write_all(chunk).await?;
        count(forwarded, read as u64);
    }
}
