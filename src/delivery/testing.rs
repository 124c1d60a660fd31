//! Helpers for the delivery unit tests: a real journal in a temp folder,
//! messages made from the A01 sample for any number of patients, and small
//! `Deliver`/`Objections` implementations that record what they were given.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::pipeline::Router;
use super::scheduler::{Destination, RetryPolicy};
use super::{Deliver, Delivered, DeliveryError, DeliveryItem, Objections};
use crate::journal::{Incoming, Journal, Status, StoreConfig, SyncPolicy};
use crate::mapping::MappingSet;
use crate::route::RouteSet;

pub fn journal(dir: &Path) -> Journal {
    Journal::open(&StoreConfig {
        path: dir.join("journal.db"),
        sync: SyncPolicy::Normal,
        ..StoreConfig::default()
    })
    .unwrap()
}

/// An NHS number with a valid modulus-11 check digit, different for each `n`.
pub fn nhs_number(n: u32) -> String {
    let mut k = n;
    loop {
        let body = format!("999{:06}", k % 1_000_000);
        let sum: u32 = body
            .chars()
            .zip((2..=10).rev())
            .map(|(c, w)| c.to_digit(10).unwrap() * w)
            .sum();
        let check = 11 - (sum % 11);
        let check = if check == 11 { 0 } else { check };
        if check != 10 {
            return format!("{body}{check}");
        }
        k += 1_000;
    }
}

/// The A01 sample for patient `patient` with control id `control_id`.
pub fn a01(control_id: &str, patient: u32) -> String {
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/adt_a01_admission.hl7"),
    )
    .unwrap();
    sample
        .replace("RAL20261120143512001", control_id)
        .replace("9990000018", &nhs_number(patient))
        .replace("RAL1234567", &format!("RAL{patient:07}"))
}

/// Journals `raw` as an accepted message from `listener`; returns its id.
pub async fn commit(journal: &Journal, listener: &str, control_id: &str, raw: &str) -> i64 {
    let out = journal
        .commit(vec![Incoming {
            listener: listener.into(),
            peer: "127.0.0.1:1".into(),
            received_at: jiff::Timestamp::now(),
            sender: "PAS^RAL01".into(),
            control_id: control_id.into(),
            message_type: "ADT^A01".into(),
            version: "2.4".into(),
            status: Status::Accepted,
            ack_code: Some("AA".into()),
            ack: Some("MSA|AA".into()),
            error: None,
            raw: Bytes::from(raw.to_string()),
        }])
        .await
        .unwrap();
    out[0].id()
}

pub fn mappings() -> MappingSet {
    MappingSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap()
}

pub fn routes(toml: &str) -> RouteSet {
    RouteSet::from_sources(&[("test.toml".into(), toml.to_string())]).unwrap()
}

pub fn router(toml: &str, sources: &[&str], destinations: &[&str]) -> Router {
    Router::new(
        routes(toml),
        mappings(),
        sources.iter().map(|s| s.to_string()),
        destinations.iter().map(|s| s.to_string()),
    )
}

/// What a [`Recorder`] answers for one item.
pub type Plan = dyn Fn(&DeliveryItem) -> Result<Delivered, DeliveryError> + Send + Sync;

/// A destination that records every item it is given (in call order) and
/// answers as `plan` says.
pub struct Recorder {
    pub calls: Mutex<Vec<DeliveryItem>>,
    /// Items delivered successfully, in order.
    pub delivered: Mutex<Vec<DeliveryItem>>,
    plan: Box<Plan>,
}

impl Recorder {
    pub fn new(
        plan: impl Fn(&DeliveryItem) -> Result<Delivered, DeliveryError> + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            delivered: Mutex::new(Vec::new()),
            plan: Box::new(plan),
        })
    }

    pub fn accepting() -> Arc<Recorder> {
        Recorder::new(|_| Ok(Delivered::default()))
    }

    pub fn delivered_ids(&self) -> Vec<i64> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect()
    }
}

impl Deliver for Recorder {
    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(item.clone());
            let answer = (self.plan)(item);
            if answer.is_ok() {
                self.delivered.lock().unwrap().push(item.clone());
            }
            answer
        })
    }
}

/// An objections register holding a fixed set of NHS numbers.
pub struct Register(pub BTreeSet<String>);

impl Objections for Register {
    fn is_objecting(&self, nhs_number: &str) -> Result<bool, String> {
        Ok(self.0.contains(nhs_number))
    }
}

/// A scheduler destination over `deliver` with fast retries.
pub fn destination(id: &str, deliver: Arc<dyn Deliver>) -> Destination {
    Destination {
        id: id.to_string(),
        external: false,
        concurrency: 4,
        timeout: Duration::from_secs(10),
        policy: RetryPolicy {
            max_attempts: 5,
            max_age_ms: 3_600_000,
            backoff_initial_ms: 10,
            backoff_max_ms: 40,
        },
        deliver,
        objections: None,
    }
}

/// Polls `check` every 20 ms until it holds, for up to 60 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
