//! speedscope export of a flame graph snapshot. Filled in by the exports work.
