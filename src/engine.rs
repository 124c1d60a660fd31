//! The engine: opens the journal and the record store, loads routes and
//! mappings, builds the destinations, binds every MLLP listener and the HTTP
//! API, runs them and the delivery queue until told to stop, then drains.
//!
//! Startup order: journal (so nothing is accepted without somewhere durable
//! to put it), record store (records, tokens, audit, objections), routes
//! (`<config folder>/routes`) and mappings
//! (`<config folder>/mappings`) — a broken route or mapping file stops the
//! start, as `junction check` would report it — then the destinations are
//! built. A destination that cannot be built (e.g. a kind this build lacks)
//! does not stop the engine: its documents are queued with the reason as
//! their `last_error` and `GET /api/queues` shows it as not running. Then
//! every listener socket and the HTTP socket are bound — any bind failure
//! aborts the start before anything is served — then the delivery pipeline
//! and schedulers, the sources (`[sources.<id>]`, e.g. MESH inbox polling),
//! the accept loops start and `/ready` turns true.
//!
//! Shutdown ([`RunningEngine::stop`], on SIGTERM/SIGINT in [`serve`]):
//! `/ready` turns false, listeners stop accepting, each connection finishes
//! (answers) the frame in hand and closes, each source finishes the document
//! in hand (journaled and acknowledged, or left in the inbox); at the same
//! time the pipeline and
//! the schedulers stop taking work and let deliveries in flight finish; both
//! bounded by `[engine] shutdown_timeout_secs`; then the HTTP server stops and
//! the journal's writer thread ends when its last handle is dropped. Whatever
//! is abandoned at the timeout was never acknowledged (intake) or is still
//! pending in the queue (delivery), so nothing is lost.
//!
//! SIGHUP ([`RunningEngine::reload_tls`]) reads the TLS listeners' certificate
//! and key files again, for a renewed certificate without a restart; nothing
//! else is reloaded (config, routes and mappings need a restart).
//!
//! It does not parse config files or set up logging: `cli/serve.rs` does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::access::Access;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::delivery::build::{self, BuildContext};
use crate::delivery::pipeline::Router;
use crate::delivery::queue::{DeliveryQueue, Unavailable};
use crate::delivery::scheduler::{Destination, RetryPolicy};
use crate::journal::{Journal, JournalError, StoreConfig};
use crate::mapping::MappingSet;
use crate::mllp::listener::{Listener, ListenerError};
use crate::route::RouteSet;
use crate::store::{RecordStore, RecordStoreConfig, StoreError};
use crate::telemetry::events::EventBus;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Records(#[from] StoreError),
    #[error("{count} problem(s) in the routes under {}:\n{problems}", dir.display())]
    Routes {
        dir: PathBuf,
        count: usize,
        problems: String,
    },
    #[error("{count} problem(s) in the mappings under {}:\n{problems}", dir.display())]
    Mappings {
        dir: PathBuf,
        count: usize,
        problems: String,
    },
    #[error("{0}")]
    ApiBind(std::io::Error),
    /// Another engine holds this journal: two would work one delivery queue
    /// and send every document twice.
    #[error(
        "the journal {} is in use by another Junction engine{}: one engine per journal (give this one its own `[store] path`)",
        path.display(),
        holder.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        path: PathBuf,
        holder: Option<String>,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// An engine whose sockets are bound and whose tasks are running.
pub struct RunningEngine {
    listeners: BTreeMap<String, SocketAddr>,
    api_addr: SocketAddr,
    journal: Journal,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    events: EventBus,
    /// Stops the accept loops and idle connections.
    listeners_cancel: CancellationToken,
    /// Connection tasks (and the accept loops).
    tracker: TaskTracker,
    /// Stops the sources (between two documents).
    sources_cancel: CancellationToken,
    /// Source tasks (MESH inbox polling).
    sources: TaskTracker,
    api_cancel: CancellationToken,
    api_task: JoinHandle<()>,
    delivery: DeliveryQueue,
    records: RecordStore,
    shutdown_timeout: Duration,
    /// The TLS listeners' reload handles (SIGHUP).
    tls_reloads: Vec<crate::mllp::listener::TlsReload>,
    /// The journal file, locked (`flock`) for as long as the engine runs.
    _journal_lock: std::fs::File,
}

impl std::fmt::Debug for RunningEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEngine")
            .field("listeners", &self.listeners)
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

impl RunningEngine {
    /// Each listener id and the address it actually bound.
    pub fn listeners(&self) -> &BTreeMap<String, SocketAddr> {
        &self.listeners
    }

    pub fn listener_addr(&self, id: &str) -> Option<SocketAddr> {
        self.listeners.get(id).copied()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The record store (`[store] records`).
    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// The delivery queue's operations (depths, retry, replay).
    pub fn delivery(&self) -> crate::delivery::queue::DeliveryHandle {
        self.delivery.handle()
    }

    /// Reads every TLS listener's certificate and key files again (what
    /// SIGHUP does): new connections get the renewed certificate; a listener
    /// whose files cannot be used keeps the one it had, and says why. Logs one
    /// line per listener; returns how many failed.
    pub fn reload_tls(&self) -> usize {
        let mut failed = 0;
        for tls in &self.tls_reloads {
            match tls.reload() {
                Ok(()) => info!(listener = tls.id(), "TLS certificate reloaded"),
                Err(err) => {
                    failed += 1;
                    warn!(listener = tls.id(), error = %err, "TLS reload failed; the certificate in use stays");
                }
            }
        }
        failed
    }

    /// Drains and stops everything (see the module docs).
    pub async fn stop(self) {
        info!("shutting down: no longer accepting connections");
        self.ready.store(false, Ordering::Release);
        self.listeners_cancel.cancel();
        self.tracker.close();
        self.sources_cancel.cancel();
        self.sources.close();
        let sources = async {
            if tokio::time::timeout(self.shutdown_timeout, self.sources.wait())
                .await
                .is_err()
            {
                warn!(
                    still_running = self.sources.len(),
                    "shutdown timeout: abandoning sources still busy (what they had not journaled stays in the inbox)"
                );
            }
        };
        let listeners = async {
            if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    still_running = self.tracker.len(),
                    timeout_secs = self.shutdown_timeout.as_secs(),
                    "shutdown timeout: abandoning connections still busy (their messages were not acknowledged)"
                );
            }
        };
        tokio::join!(
            listeners,
            sources,
            self.delivery.stop(self.shutdown_timeout)
        );
        // Open event streams would hold the HTTP server's graceful shutdown.
        self.events.close();
        self.api_cancel.cancel();
        let api_wait = tokio::time::timeout(Duration::from_secs(2), self.api_task).await;
        if api_wait.is_err() {
            warn!("HTTP API did not stop within 2s");
        }
        info!("shut down");
    }
}

/// The journal's path: relative paths are relative to the config file's folder.
fn resolve_store(store: &StoreConfig, config_dir: &Path) -> StoreConfig {
    StoreConfig {
        path: config_dir.join(&store.path),
        sync: store.sync,
        records: config_dir.join(&store.records),
        password_file: store.password_file.as_ref().map(|f| config_dir.join(f)),
        tls_ca_file: store.tls_ca_file.as_ref().map(|f| config_dir.join(f)),
        ..store.clone()
    }
}

/// Locks the journal file for this process, so a second engine started on
/// the same journal (by mistake, a restart racing the old process, a config
/// naming it through a link) refuses to start instead of working the same
/// delivery queue (every document sent twice, a MESH message to another
/// organisation among them). The lock is the kernel's (`flock` on the file's
/// inode): it goes with the process, however it ends, so a kill -9 leaves
/// nothing to clean up. `<journal>.lock` beside it (by the journal's real
/// path) holds the holder's pid, for the message.
fn lock_journal(journal: &Path) -> Result<std::fs::File, EngineError> {
    use std::io::{Read, Seek, Write};
    let lock_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Lock { path, source }
    };
    if let Some(parent) = journal.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(lock_err(parent))?;
    }
    // the journal's real path, so that two configs naming it through a
    // symbolic link (of the file or of a folder) or `..` lock the same file
    let real = match std::fs::canonicalize(journal) {
        Ok(real) => real,
        Err(_) => match (journal.parent(), journal.file_name()) {
            (Some(parent), Some(name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                std::fs::canonicalize(parent)
                    .map_err(lock_err(parent))?
                    .join(name)
            }
            _ => journal.to_path_buf(),
        },
    };
    let mut name = real.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let lock_err = |source| EngineError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    // the lock is on the journal file itself (its inode: a hard link to it is
    // the same file), which SQLite's own locks (POSIX `fcntl`) do not see;
    // the `.lock` file beside it only names the holder
    let db = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(journal)
            .map_err(|source| EngineError::Lock {
                path: journal.to_path_buf(),
                source,
            })?
    };
    match db.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(EngineError::InUse {
                path: journal.to_path_buf(),
                holder: (!holder.is_empty() && holder.len() < 20).then(|| holder.to_string()),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    write!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(db)
}

/// How often the journal's retention runs (`[store] retain_days`).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes the journal's messages older than `days` whose story is over, at
/// start and then every [`PRUNE_EVERY`], until `cancel`. Logs counts only.
async fn retention(journal: Journal, days: u32, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let keep = jiff::SignedDuration::from_hours(24 * i64::from(days));
    loop {
        let before = jiff::Timestamp::now() - keep;
        match journal.prune(before).await {
            Ok(0) => debug!(retain_days = days, "journal retention: nothing to prune"),
            Ok(n) => {
                metrics.journal_pruned.inc_by(n as u64);
                info!(
                    pruned = n,
                    retain_days = days,
                    "journal retention: old messages deleted"
                )
            }
            Err(err) => warn!(error = %err, "journal retention failed; tried again later"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Loads `<config folder>/routes` and `<config folder>/mappings` (each
/// optional: without routes every message is unrouted, and kept).
fn load_routing(config: &Config, config_dir: &Path) -> Result<Router, EngineError> {
    let routes_dir = config_dir.join("routes");
    let route_problems = |errors: Vec<crate::route::RouteError>| EngineError::Routes {
        dir: routes_dir.clone(),
        count: errors.len(),
        problems: errors
            .iter()
            .map(|e| format!("{}:{}:{}: {}", e.file.display(), e.line, e.col, e.message))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let routes = if routes_dir.is_dir() {
        RouteSet::load_dir(&routes_dir).map_err(route_problems)?
    } else {
        warn!(dir = %routes_dir.display(), "no routes folder: every message will be unrouted");
        RouteSet::default()
    };
    let mappings_dir = config_dir.join("mappings");
    let mappings = if mappings_dir.is_dir() {
        MappingSet::load_dir(&mappings_dir).map_err(|errors| EngineError::Mappings {
            dir: mappings_dir.clone(),
            count: errors.len(),
            problems: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        })?
    } else if mappings_dir.exists() {
        // (a file of that name: said, rather than every route's mapping unknown)
        return Err(EngineError::Mappings {
            dir: mappings_dir.clone(),
            count: 1,
            problems: format!(
                "{} is not a folder, expected the folder of mapping files (`mappings/*.toml`)",
                mappings_dir.display()
            ),
        });
    } else {
        MappingSet::default()
    };
    // a route naming a mapping that is not there (no `mappings/` folder at
    // all) would take every message it routes and fail it at the map stage:
    // refused, as `check` does (`check` also holds the mapping to declaring
    // the route's message types; a wider route, `ADT^*`, still starts here)
    let names: Vec<&str> = mappings.plans().map(|p| p.name()).collect();
    let unmappable = routes.check_mappings(&names);
    if !unmappable.is_empty() {
        return Err(route_problems(unmappable));
    }
    info!(
        routes = routes.routes().len(),
        mappings = mappings.plans().count(),
        "routes and mappings loaded"
    );
    // application acknowledgements (MSH-16) only in enhanced (`auto`) mode:
    // in original mode the listener's ACK already was the application's
    let application_acks = config.listeners.iter().filter_map(|(id, l)| {
        let destination = l.application_ack.clone()?;
        (l.ack_mode == crate::mllp::listener::AckMode::Auto).then(|| (id.clone(), destination))
    });
    Ok(Router::new(
        routes,
        mappings,
        config.sources.keys().cloned(),
        config.destinations.keys().cloned(),
    )
    .with_application_acks(application_acks))
}

/// Builds every destination; one that cannot be built is reported (and
/// its rows wait), never fatal.
fn build_destinations(
    config: &Config,
    records: &RecordStore,
) -> (Vec<(Destination, String)>, Vec<Unavailable>) {
    let ctx = BuildContext {
        records: Some(records),
        mailboxes: &config.mesh.mailboxes,
    };
    let mut built = Vec::new();
    let mut unavailable = Vec::new();
    for (id, cfg) in &config.destinations {
        let kind = cfg.kind.as_str().to_string();
        match build::build(id, cfg, &ctx) {
            Ok(deliver) => {
                info!(destination = %id, kind = %kind, external = cfg.is_external(), "destination ready");
                built.push((
                    Destination {
                        id: id.clone(),
                        external: cfg.is_external(),
                        concurrency: usize::try_from(cfg.concurrency).unwrap_or(1).max(1),
                        // The destination bounds its own attempt by timeout_secs
                        // (with a precise error); this is the safety net.
                        timeout: Duration::from_secs(cfg.timeout_secs.saturating_add(5)),
                        policy: RetryPolicy::from_config(cfg),
                        deliver,
                        // The objections register lives in the record store.
                        objections: Some(Arc::new(records.clone())),
                    },
                    kind,
                ));
            }
            Err(err) => {
                warn!(destination = %id, kind = %kind, error = %err,
                    "destination cannot be built: its documents stay queued");
                unavailable.push(Unavailable {
                    id: id.clone(),
                    kind,
                    external: cfg.is_external(),
                    error: err.to_string(),
                });
            }
        }
    }
    (built, unavailable)
}

/// Opens the journal, binds everything, starts serving. Returns once every
/// socket is bound and `/ready` is true.
pub async fn start(config: Config, config_dir: &Path) -> Result<RunningEngine, EngineError> {
    let metrics = Arc::new(Metrics::new());
    let events = EventBus::default();
    let store = resolve_store(&config.store, config_dir);
    let journal_lock = lock_journal(&store.path)?;
    let journal = Journal::open_with_metrics(&store, Arc::clone(&metrics))?;
    info!(
        path = %journal.path().display(),
        sync = journal.sync_policy().as_str(),
        "journal open"
    );
    let records = RecordStore::open(&RecordStoreConfig::of(&store))?;
    info!(location = %records.location(), "record store open");
    let router = load_routing(&config, config_dir)?;
    let (built, unavailable) = build_destinations(&config, &records);

    // Bind everything before serving anything: a bind failure must stop the start.
    // what `GET /api/events?listener=` may name: a listener or a source
    let origins: Vec<String> = config
        .listeners
        .keys()
        .chain(config.sources.keys())
        .cloned()
        .collect();
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (id, cfg) in config.listeners {
        bound.push(Listener::bind(&id, cfg).await?);
    }
    let api_socket = api::bind(&config.api).await.map_err(EngineError::ApiBind)?;
    let api_addr = api_socket.local_addr().map_err(EngineError::ApiBind)?;

    let delivery = DeliveryQueue::start(
        journal.clone(),
        events.clone(),
        Arc::clone(&metrics),
        router,
        built,
        unavailable,
    );

    let ready = Arc::new(AtomicBool::new(false));
    let listeners_cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut listeners = BTreeMap::new();
    let tls_reloads: Vec<_> = bound.iter().filter_map(Listener::tls_reload).collect();
    for listener in bound {
        info!(listener = listener.id(), addr = %listener.local_addr(), "MLLP listener bound");
        listeners.insert(listener.id().to_string(), listener.local_addr());
        tracker.spawn(listener.with_events(events.clone()).run(
            journal.clone(),
            Arc::clone(&metrics),
            listeners_cancel.clone(),
            tracker.clone(),
        ));
    }

    let sources_cancel = CancellationToken::new();
    let sources = TaskTracker::new();
    let started = crate::source::spawn_all(
        &config.sources,
        &config.mesh.mailboxes,
        &crate::source::Shared {
            journal: &journal,
            records: &records,
            events: &events,
            metrics: &metrics,
        },
        &sources_cancel,
        &sources,
    );
    if started > 0 {
        info!(sources = started, "sources started");
    }
    // retention runs beside the sources and stops with them
    if let Some(days) = store.retain_days {
        sources.spawn(retention(
            journal.clone(),
            days,
            Arc::clone(&metrics),
            sources_cancel.clone(),
        ));
        info!(retain_days = days, "journal retention on");
    }

    let api_cancel = CancellationToken::new();
    let state = ApiState {
        journal: journal.clone(),
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        events: events.clone(),
        delivery: Some(delivery.handle()),
        origins: Arc::new(origins),
        // Operations endpoints are open only on a loopback address.
        access: Access::new(records.clone(), api_addr.ip().is_loopback()),
        // (`check`, which every start runs, refuses one that is not usable)
        public_url: config
            .api
            .public_url
            .as_deref()
            .and_then(|u| api::public_base(u).ok())
            .map(Arc::from),
    };
    let api_task = tokio::spawn({
        let api_cancel = api_cancel.clone();
        async move {
            if let Err(err) = api::serve_on(api_socket, state, api_cancel).await {
                tracing::error!(error = %err, "HTTP API stopped with an error");
            }
        }
    });
    info!(addr = %api_addr, "HTTP API bound");
    ready.store(true, Ordering::Release);
    info!(listeners = listeners.len(), "ready");
    Ok(RunningEngine {
        listeners,
        api_addr,
        journal,
        metrics,
        ready,
        events,
        listeners_cancel,
        tracker,
        sources_cancel,
        sources,
        api_cancel,
        api_task,
        delivery,
        records,
        shutdown_timeout: Duration::from_secs(config.engine.shutdown_timeout_secs),
        tls_reloads,
        _journal_lock: journal_lock,
    })
}

/// Runs the engine until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(config: Config, config_dir: PathBuf) -> Result<(), EngineError> {
    use tokio::signal::unix::{signal, SignalKind};
    let signal_err = |signal| move |source| EngineError::Signal { signal, source };
    let mut term = signal(SignalKind::terminate()).map_err(signal_err("SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err("SIGINT"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err("SIGHUP"))?;
    let engine = start(config, &config_dir).await?;
    let which = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                info!("SIGHUP: reloading TLS certificates");
                engine.reload_tls();
            }
        }
    };
    info!(signal = which, "signal received");
    engine.stop().await;
    Ok(())
}
