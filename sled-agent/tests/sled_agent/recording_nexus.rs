//! A stand-in for Nexus's internal API that records what sled agents tell it, can pretend to
//! be down (503), and checks, when told a VMM is gone, that the sled agent no longer lists it
//! (invariant 6: [`RecordingNexus::final_report`] fails the test when it did).

use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, RequestContext, TypedBody,
};
use halyard_common::ids::{SledUuid, VmmUuid};
use halyard_common::internal_api::{SledAgentInfo, SledVmmState};
use halyard_nexus_internal_api::{NexusInternalApi, SagaInMemory, SledPathParam, VmmPathParam};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One VMM report as received.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub propolis_id: VmmUuid,
    pub state: SledVmmState,
    /// For a terminal state: was the VMM still in a watched sled agent's `GET /vmms` when
    /// reported? `None` for a state that is not terminal, and for a terminal one that could
    /// not be checked (no sled agent watched, or one did not answer): `final_report` refuses
    /// both.
    pub still_listed: Option<bool>,
}

/// One attempt to report a VMM's state, whether the stand-in took it or refused it (503).
#[derive(Debug, Clone, Copy)]
pub struct ReportAttempt {
    pub propolis_id: VmmUuid,
    pub state: SledVmmState,
    pub accepted: bool,
}

pub struct RecordingNexus {
    address: OnceLock<SocketAddr>,
    server: Mutex<Option<dropshot::HttpServer<Arc<RecordingNexus>>>>,
    pub registrations: Mutex<Vec<(SledUuid, SledAgentInfo)>>,
    /// The reports taken, in arrival order.
    pub reports: Mutex<Vec<Report>>,
    /// Every report attempt, taken or refused, in arrival order.
    pub report_attempts: Mutex<Vec<ReportAttempt>>,
    /// While false, every request gets 503 (see `set_available`).
    available: AtomicBool,
    /// Registrations refused while unavailable (reports are in `report_attempts`).
    pub refused_registrations: AtomicUsize,
    sleds: Mutex<Vec<SocketAddr>>,
}

enum RecordingNexusImpl {}

impl NexusInternalApi for RecordingNexusImpl {
    type Context = Arc<RecordingNexus>;

    async fn sled_agent_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<SledPathParam>,
        body: TypedBody<SledAgentInfo>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        if !nexus.is_available() {
            nexus.refused_registrations.fetch_add(1, Ordering::SeqCst);
            return Err(unavailable());
        }
        nexus
            .registrations
            .lock()
            .unwrap()
            .push((path.into_inner().sled_id, body.into_inner()));
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        let propolis_id = path.into_inner().propolis_id;
        let state = body.into_inner();
        let accepted = {
            // Under the lock, so an attempt is recorded on the side of `set_available` it
            // was answered on.
            let mut attempts = nexus.report_attempts.lock().unwrap();
            let accepted = nexus.is_available();
            attempts.push(ReportAttempt {
                propolis_id,
                state,
                accepted,
            });
            accepted
        };
        if !accepted {
            return Err(unavailable());
        }
        let still_listed = if state.vmm_state.state.is_terminal() {
            nexus.listed_anywhere(propolis_id).await
        } else {
            None
        };
        nexus.reports.lock().unwrap().push(Report {
            propolis_id,
            state,
            still_listed,
        });
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn saga_list(
        _: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<SagaInMemory>>, HttpError> {
        Ok(HttpResponseOk(Vec::new())) // this stand-in runs no sagas
    }
}

impl RecordingNexus {
    pub fn start(address: SocketAddr) -> Arc<RecordingNexus> {
        let nexus = Arc::new(RecordingNexus {
            address: OnceLock::new(),
            server: Mutex::new(None),
            registrations: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
            report_attempts: Mutex::new(Vec::new()),
            available: AtomicBool::new(true),
            refused_registrations: AtomicUsize::new(0),
            sleds: Mutex::new(Vec::new()),
        });
        let api = halyard_nexus_internal_api::nexus_internal_api_mod::api_description::<
            RecordingNexusImpl,
        >()
        .unwrap();
        let server = dropshot::ServerBuilder::new(api, Arc::clone(&nexus), crate::log())
            .config(dropshot::ConfigDropshot {
                bind_address: address,
                ..Default::default()
            })
            // Nexus's certificate, clients' required: what the sled agent expects of Nexus.
            .tls(Some(dropshot::ConfigTls::Dynamic(
                halyard_tls::pki::test_pki()
                    .material(crate::Role::Nexus)
                    .unwrap()
                    .server_config()
                    .unwrap(),
            )))
            .start()
            .unwrap();
        nexus.address.set(server.local_addr()).unwrap();
        *nexus.server.lock().unwrap() = Some(server);
        nexus
    }

    pub fn address(&self) -> SocketAddr {
        *self.address.get().unwrap()
    }

    /// Sled agents to ask "do you still list this VMM?" when told it is gone.
    pub fn watch_sled(&self, address: SocketAddr) {
        self.sleds.lock().unwrap().push(address);
    }

    pub async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.close().await.unwrap();
        }
    }

    /// Pretends to be down (every request gets 503) or comes back; returns how many report
    /// attempts had arrived before the change.
    pub fn set_available(&self, available: bool) -> usize {
        let attempts = self.report_attempts.lock().unwrap();
        self.available.store(available, Ordering::SeqCst);
        attempts.len()
    }

    fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Whether any watched sled agent lists the VMM; `None` when that cannot be known (no
    /// sled agent watched, or one did not answer).
    async fn listed_anywhere(&self, id: VmmUuid) -> Option<bool> {
        let sleds = self.sleds.lock().unwrap().clone();
        if sleds.is_empty() {
            return None;
        }
        for sled in sleds {
            let client = crate::sled_client(sled, crate::Role::Nexus);
            let vmms = client.vmm_list().await.ok()?.into_inner();
            if vmms.iter().any(|v| v.propolis_id == id) {
                return Some(true);
            }
        }
        Some(false)
    }

    /// The report attempts about one VMM, taken or refused, in arrival order.
    pub fn report_attempts_for(&self, id: VmmUuid) -> Vec<ReportAttempt> {
        self.report_attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.propolis_id == id)
            .copied()
            .collect()
    }

    /// The reports received about one VMM, in arrival order.
    pub fn reports_for(&self, id: VmmUuid) -> Vec<Report> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.propolis_id == id)
            .copied()
            .collect()
    }

    /// The last report about one VMM, if its state is terminal. Fails the test if the VMM
    /// was still listed by a sled agent when that report arrived (invariant 6: a VMM is
    /// reported gone only once it is gone), or if that could not be checked.
    pub fn final_report(&self, id: VmmUuid) -> Option<Report> {
        let last = self
            .reports_for(id)
            .last()
            .copied()
            .filter(|r| r.state.vmm_state.state.is_terminal())?;
        match last.still_listed {
            Some(false) => Some(last),
            Some(true) => panic!(
                "VMM {id} was reported {} while its sled agent still listed it: {last:?}",
                last.state.vmm_state.state
            ),
            None => panic!(
                "VMM {id} was reported {} but no watched sled agent could say whether it \
                 still listed it (call watch_sled for every sled agent): {last:?}",
                last.state.vmm_state.state
            ),
        }
    }
}

fn unavailable() -> HttpError {
    HttpError::for_unavail(None, "pretending to be down".into())
}

/// Reports of one VMM must arrive in strictly increasing generation order (per part, and per
/// migration for its migration sides).
pub fn assert_in_order(reports: &[Report]) {
    for pair in reports.windows(2) {
        let (a, b) = (&pair[0].state, &pair[1].state);
        assert!(
            b.vmm_state.generation > a.vmm_state.generation
                || (b.vmm_state.generation == a.vmm_state.generation && b != a),
            "VMM reports out of order or repeated: {a:?} then {b:?}"
        );
        for (x, y) in [
            (a.migration_in, b.migration_in),
            (a.migration_out, b.migration_out),
        ] {
            // Each migration numbers its own side (a VMM may migrate out again after a
            // failed migration).
            if let (Some(x), Some(y)) = (x, y)
                && x.migration_id == y.migration_id
            {
                assert!(
                    y.generation >= x.generation,
                    "migration reports out of order"
                );
            }
        }
    }
}
