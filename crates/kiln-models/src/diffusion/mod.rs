//! Diffusion models as diffusers defines them, one file per component. So far: the noise
//! [`scheduler`]s (DDPM, DDIM, Euler discrete) read from a pipeline's `scheduler_config.json`,
//! the [`clip`] text encoder (`text_encoder/`), the [`unet`] (`unet/`) and the [`vae`]
//! (`vae/`), the sampling [`pipeline`] over them, and the [`training`] objective (ε/v MSE,
//! Min-SNR-γ; kiln-train's `tasks::TextToImageTask` trains with it). The CommonCanvas speed
//! recipe and its reproduction are kiln issue #17's next steps.

pub mod clip;
pub mod pipeline;
pub mod scheduler;
pub mod training;
pub mod unet;
pub mod vae;
