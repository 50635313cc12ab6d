//! The livepatch output object end to end (in progress).
