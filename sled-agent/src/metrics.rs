//! The sled agent's Prometheus metrics (`GET /metrics`): its HTTP requests (see
//! `halyard_observability::http`), its VMMs by state and backend and its capacity (read from
//! the VMM table when scraped), and the state reports and registrations it sent to Nexus.

use halyard_observability::http::HttpMetrics;
use halyard_observability::prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub(crate) struct SledMetrics {
    pub(crate) registry: Registry,
    pub(crate) http: HttpMetrics,
    /// VMM state reports Nexus answered, by outcome (`accepted`, `refused`), and attempts that
    /// did not reach it (`retried`: Nexus unreachable or unavailable; sent again later).
    pub(crate) reports: IntCounterVec,
    /// Registrations with Nexus, by outcome (`accepted`, `failed`).
    pub(crate) registrations: IntCounterVec,
    vmms: IntGaugeVec,
    hardware_threads: IntGauge,
    physical_ram: IntGauge,
}

impl SledMetrics {
    pub(crate) fn new() -> SledMetrics {
        let registry = Registry::new();
        let http = HttpMetrics::register(&registry).expect("HTTP metrics register once");
        let reports = IntCounterVec::new(
            Opts::new(
                "halyard_sled_vmm_reports_total",
                "VMM state reports sent to Nexus, by outcome: accepted, refused (a 4xx, not \
                 sent again) or retried (Nexus out of reach or unavailable)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let registrations = IntCounterVec::new(
            Opts::new(
                "halyard_sled_registrations_total",
                "Registrations of this sled with Nexus, by outcome: accepted or failed",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let vmms = IntGaugeVec::new(
            Opts::new(
                "halyard_sled_vmms",
                "VMMs this sled agent holds, by state and backend (gone ones until Nexus \
                 unregisters them)",
            ),
            &["state", "backend"],
        )
        .expect("valid metric");
        let hardware_threads = IntGauge::new(
            "halyard_sled_usable_hardware_threads",
            "Hardware threads this sled offers to VMMs",
        )
        .expect("valid metric");
        let physical_ram = IntGauge::new(
            "halyard_sled_usable_physical_ram_bytes",
            "Memory this sled offers to VMMs",
        )
        .expect("valid metric");
        for metric in [
            Box::new(reports.clone())
                as Box<dyn halyard_observability::prometheus::core::Collector>,
            Box::new(registrations.clone()),
            Box::new(vmms.clone()),
            Box::new(hardware_threads.clone()),
            Box::new(physical_ram.clone()),
        ] {
            registry
                .register(metric)
                .expect("each metric registers once");
        }
        SledMetrics {
            registry,
            http,
            reports,
            registrations,
            vmms,
            hardware_threads,
            physical_ram,
        }
    }

    /// Sets the gauges read from the VMM table: `states` is each VMM's state label.
    pub(crate) fn set_vmms<'a>(
        &self,
        backend: &str,
        states: impl IntoIterator<Item = &'a str>,
        hardware_threads: u32,
        physical_ram: i64,
    ) {
        self.vmms.reset();
        for state in states {
            self.vmms.with_label_values(&[state, backend]).inc();
        }
        self.hardware_threads.set(i64::from(hardware_threads));
        self.physical_ram.set(physical_ram);
    }
}
