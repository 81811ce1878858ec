//! The meter catalogue (design.md, "Meters"). Each meter is emitted once, by the part named.

/// A usage meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Meter {
    ApiRequests,
    DbRowsRead,
    DbRowsWritten,
    DbBytes,
    AuthEvents,
    StorageBytes,
    StorageOps,
    EgressBytes,
    FunctionInvocations,
    FunctionGbMs,
    SandboxCpuMs,
    SandboxMemMbS,
    SandboxEgressBytes,
    LlmTokensIn,
    LlmTokensOut,
    LlmCost,
    HostingBytesServed,
    ContainerCpuMs,
    AgentTurns,
    AgentToolCalls,
}

/// How a meter's events combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterKind {
    /// Events add up.
    Counter,
    /// Each event states the current level; the latest wins.
    Gauge,
}

impl Meter {
    pub const ALL: [Meter; 20] = [
        Self::ApiRequests,
        Self::DbRowsRead,
        Self::DbRowsWritten,
        Self::DbBytes,
        Self::AuthEvents,
        Self::StorageBytes,
        Self::StorageOps,
        Self::EgressBytes,
        Self::FunctionInvocations,
        Self::FunctionGbMs,
        Self::SandboxCpuMs,
        Self::SandboxMemMbS,
        Self::SandboxEgressBytes,
        Self::LlmTokensIn,
        Self::LlmTokensOut,
        Self::LlmCost,
        Self::HostingBytesServed,
        Self::ContainerCpuMs,
        Self::AgentTurns,
        Self::AgentToolCalls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ApiRequests => "api_requests",
            Self::DbRowsRead => "db_rows_read",
            Self::DbRowsWritten => "db_rows_written",
            Self::DbBytes => "db_bytes",
            Self::AuthEvents => "auth_events",
            Self::StorageBytes => "storage_bytes",
            Self::StorageOps => "storage_ops",
            Self::EgressBytes => "egress_bytes",
            Self::FunctionInvocations => "function_invocations",
            Self::FunctionGbMs => "function_gb_ms",
            Self::SandboxCpuMs => "sandbox_cpu_ms",
            Self::SandboxMemMbS => "sandbox_mem_mb_s",
            Self::SandboxEgressBytes => "sandbox_egress_bytes",
            Self::LlmTokensIn => "llm_tokens_in",
            Self::LlmTokensOut => "llm_tokens_out",
            Self::LlmCost => "llm_cost",
            Self::HostingBytesServed => "hosting_bytes_served",
            Self::ContainerCpuMs => "container_cpu_ms",
            Self::AgentTurns => "agent_turns",
            Self::AgentToolCalls => "agent_tool_calls",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The unit of one quantity. Money is in micro-units of the billing currency, so it stays an integer.
    pub fn unit(self) -> &'static str {
        match self {
            Self::ApiRequests
            | Self::DbRowsRead
            | Self::DbRowsWritten
            | Self::AuthEvents
            | Self::StorageOps
            | Self::FunctionInvocations
            | Self::AgentTurns
            | Self::AgentToolCalls => "count",
            Self::DbBytes
            | Self::StorageBytes
            | Self::EgressBytes
            | Self::SandboxEgressBytes
            | Self::HostingBytesServed => "bytes",
            Self::FunctionGbMs => "gb_ms",
            Self::SandboxCpuMs | Self::ContainerCpuMs => "ms",
            Self::SandboxMemMbS => "mb_s",
            Self::LlmTokensIn | Self::LlmTokensOut => "tokens",
            Self::LlmCost => "micro_usd",
        }
    }

    pub fn kind(self) -> MeterKind {
        match self {
            Self::StorageBytes | Self::DbBytes => MeterKind::Gauge,
            _ => MeterKind::Counter,
        }
    }

    /// The one part of the platform that emits this meter.
    pub fn emitted_by(self) -> &'static str {
        match self {
            Self::ApiRequests => "platform core",
            Self::DbRowsRead | Self::DbRowsWritten | Self::DbBytes => "app database",
            Self::AuthEvents => "auth",
            Self::StorageBytes | Self::StorageOps | Self::EgressBytes => "storage and hosting",
            Self::FunctionInvocations | Self::FunctionGbMs => "functions",
            Self::SandboxCpuMs | Self::SandboxMemMbS | Self::SandboxEgressBytes => "sandboxes",
            Self::LlmTokensIn | Self::LlmTokensOut | Self::LlmCost => "model gateway",
            Self::HostingBytesServed | Self::ContainerCpuMs => "hosting",
            Self::AgentTurns | Self::AgentToolCalls => "agent runtime",
        }
    }

    pub fn dimensions(self) -> &'static [&'static str] {
        match self {
            Self::ApiRequests => &["env", "surface"],
            Self::AuthEvents => &["env", "kind"],
            Self::FunctionInvocations | Self::FunctionGbMs => &["env", "function"],
            Self::SandboxCpuMs | Self::SandboxMemMbS | Self::SandboxEgressBytes => &["env", "session"],
            Self::AgentTurns | Self::AgentToolCalls => &["env", "session"],
            Self::LlmTokensIn | Self::LlmTokensOut | Self::LlmCost => &["env", "session", "model"],
            _ => &["env"],
        }
    }
}
