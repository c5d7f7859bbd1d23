//! Files: outputs written atomically (their temporaries removed on interrupt), inputs
//! memory-mapped page by page, progress bars.

pub mod atomic_file;
pub mod mapped_file;
pub mod object_output;
pub mod partial;
pub mod progress;
