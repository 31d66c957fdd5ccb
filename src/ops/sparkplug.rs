//! Sparkplug B actions: the rebirth request, for the console (the running gateway's service). Audited in the
//! configuration database under the operator's name; rate-limited by the service.

use super::{Actor, Ops, OpsError};
use crate::sparkplug::{Sparkplug, SparkplugError};

impl Ops {
    /// Sends the `Node Control/Rebirth` NCMD to `group`/`node` through the running gateway's service.
    pub async fn sparkplug_rebirth(
        &self,
        sparkplug: &Sparkplug,
        group: &str,
        node: &str,
        actor: &Actor,
    ) -> Result<(), OpsError> {
        sparkplug.rebirth(group, node, actor.as_str(), self.security().pool()).await.map_err(|e| match e {
            SparkplugError::Store(e) => OpsError::Store(e),
            other => OpsError::Invalid(other.to_string()),
        })
    }
}
