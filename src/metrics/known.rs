//! A gauge that stays out of `/metrics` until its value is known: a figure nobody can
//! read (a broker's depth without its management API) must be absent, never a false 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Debug)]
pub struct KnownGauge<N, A> {
    known: Arc<AtomicBool>,
    gauge: Gauge<N, A>,
}

impl<N, A: Default> Default for KnownGauge<N, A> {
    fn default() -> Self {
        KnownGauge {
            known: Arc::default(),
            gauge: Gauge::default(),
        }
    }
}

impl<N, A> Clone for KnownGauge<N, A> {
    fn clone(&self) -> Self {
        KnownGauge {
            known: self.known.clone(),
            gauge: self.gauge.clone(),
        }
    }
}

impl<N, A: Atomic<N>> KnownGauge<N, A> {
    /// Sets the value; from now on the gauge is shown.
    pub fn set(&self, value: N) {
        self.gauge.set(value);
        self.known.store(true, Ordering::Release);
    }

    /// No longer known: absent again until the next `set`.
    pub fn forget(&self) {
        self.known.store(false, Ordering::Release);
    }
}

impl<N, A> TypedMetric for KnownGauge<N, A> {
    const TYPE: MetricType = MetricType::Gauge;
}

impl<N, A> EncodeMetric for KnownGauge<N, A>
where
    Gauge<N, A>: EncodeMetric,
{
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        if self.known.load(Ordering::Acquire) {
            self.gauge.encode(encoder)
        } else {
            Ok(())
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}
