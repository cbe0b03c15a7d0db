//! Diffusion models as diffusers defines them, one file per component. So far: the noise
//! [`scheduler`]s (DDPM, DDIM, Euler discrete) read from a pipeline's `scheduler_config.json`,
//! the [`clip`] text encoder (`text_encoder/`), the [`unet`] (`unet/`) and the [`vae`]
//! (`vae/`), and the sampling [`pipeline`] over them. Tokenising prompts, the CLI and training
//! are kiln issue #17's next steps.

pub mod clip;
pub mod pipeline;
pub mod scheduler;
pub mod unet;
pub mod vae;
