//! Dumps of live processes holding each kind of file.
