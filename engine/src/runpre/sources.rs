//! Where the code a before image is compared with comes from, object by object: the
//! kernel's text (memory or image file) for vmlinux and for a module kallsyms lists
//! (loaded), and the module's `.ko`, laid out as it would be once loaded
//! ([`ModuleImage`]), for one that is not.

use std::collections::HashMap;

use kstack_kfacts::livepatch::VMLINUX;

use super::{
    BeforeImage, KallsymsIndex, KernelText, MatchReport, ModuleImage, ModulesDir, RunPreError,
    match_by_name,
};

/// The kernel's code and symbols, and the modules it would load; each module's
/// `.ko` is laid out once, on first use.
pub struct CodeSources<'a> {
    text: &'a dyn KernelText,
    symbols: &'a KallsymsIndex,
    modules: Option<&'a ModulesDir>,
    laid_out: HashMap<String, ModuleImage>,
}

impl std::fmt::Debug for CodeSources<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeSources")
            .field("modules", &self.modules)
            .field("laid_out", &self.laid_out.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<'a> CodeSources<'a> {
    pub fn new(
        text: &'a dyn KernelText,
        symbols: &'a KallsymsIndex,
        modules: Option<&'a ModulesDir>,
    ) -> CodeSources<'a> {
        CodeSources {
            text,
            symbols,
            modules,
            laid_out: HashMap::new(),
        }
    }

    /// The modules directory `.ko` files are read from, if any.
    pub fn modules(&self) -> Option<&ModulesDir> {
        self.modules
    }

    /// Matches `image` against the code of its object (`image.object`); `None` when
    /// that is a module that is neither loaded nor in the modules directory.
    pub fn match_image(&mut self, image: &BeforeImage) -> Result<Option<MatchReport>, RunPreError> {
        if image.object == VMLINUX || self.symbols.has_object(&image.object) {
            return Ok(Some(match_by_name(image, self.text, self.symbols)));
        }
        if !self.laid_out.contains_key(&image.object) {
            let Some(dir) = self.modules else {
                return Ok(None);
            };
            let Some(ko) = dir.ko(&image.object)? else {
                return Ok(None);
            };
            let laid = ModuleImage::load(&ko, &image.object, self.symbols)?;
            self.laid_out.insert(image.object.clone(), laid);
        }
        let laid = &self.laid_out[&image.object];
        Ok(Some(match_by_name(image, &laid.text, &laid.symbols)))
    }

    /// Whether code of `object` was compared with its `.ko` file (a module not
    /// loaded), not with code in memory: reports must not call it the running code.
    pub fn from_file(&self, object: &str) -> bool {
        self.laid_out.contains_key(object)
    }

    /// Forgets the laid-out `.ko` of `module` (a sweep over many modules need not
    /// keep them all).
    pub fn release(&mut self, module: &str) {
        self.laid_out.remove(module);
    }
}
