//! Diffusion models as diffusers defines them, one file per component. So far: the noise
//! [`scheduler`]s (DDPM, DDIM, Euler discrete) read from a pipeline's `scheduler_config.json`.
//! The UNet, VAE and CLIP text encoder, the pipeline and training are kiln issue #17's next
//! steps.

pub mod scheduler;
