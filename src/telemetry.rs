//! Logging, initialized once per process. Every line carries the process's
//! role (supervisor, frontend, preproc0, gpu0, ...); request work runs in
//! spans with `request_id`, so one request can be followed across processes.

use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

struct WithRole<F> {
    role: String,
    inner: F,
}

impl<S, N> FormatEvent<S, N> for WithRole<Format<fmt::format::Full>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, e: &tracing::Event<'_>) -> std::fmt::Result {
        write!(w, "{:<9} ", self.role)?;
        self.inner.format_event(ctx, w, e)
    }
}

impl<S> FormatEvent<S, JsonFields> for WithRole<Format<Json>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut w: Writer<'_>,
        e: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The JSON formatter has no static fields: render the line, then add
        // the role as the object's first key.
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), e)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(w, "{{\"role\":\"{}\",{rest}", self.role),
            None => w.write_str(&line),
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides `level`.
pub fn init(role: &str, format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .event_format(WithRole { role: role.to_string(), inner: Format::default().with_target(false) })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(WithRole { role: role.to_string(), inner: Format::default().json().with_span_list(true) })
            .try_init(),
    };
    // A second init (tests calling entry points twice) keeps the first.
    let _ = result;
}
