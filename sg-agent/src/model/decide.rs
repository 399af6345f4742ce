//! The stateless policy decision of the reference model. (in progress)
