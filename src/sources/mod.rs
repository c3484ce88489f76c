//! Sources of values a task resolves when it starts, beyond Secrets Manager and SSM (which still
//! live in [`crate::reference`], [`crate::index`] and [`crate::decide`]): each source keeps its
//! reference form, identity, evidence and event reading in one file here.

pub mod s3;
