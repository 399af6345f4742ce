//! The compiler: Policy -> MapImage, pure and deterministic. (in progress)
