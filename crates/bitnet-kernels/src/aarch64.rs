//! aarch64 kernels (none yet: every op runs the portable code).

use crate::Kernels;

/// The aarch64 kernel set `name` if this CPU has its features, else `None`.
pub(crate) fn kernels(_name: &str) -> Option<Kernels> {
    None
}
