//! Where model configs come from: the repository directory, behind a trait
//! so the model control's rules are tested without one.

use std::path::PathBuf;

use model_repo::{Model, RepoError};

/// The repository as the model control reads it.
pub trait Catalog {
    /// The models it holds, sorted.
    fn names(&self) -> Vec<String>;
    /// Model `name` with every version on disk, its config read (or
    /// `config`, an override) and validated.
    fn read(&self, name: &str, config: Option<&str>) -> Result<Model, CatalogError>;
}

#[derive(Debug)]
pub enum CatalogError {
    NotFound(String),
    Invalid(String),
}

/// The repository directory.
pub struct Disk(pub PathBuf);

impl Catalog for Disk {
    fn names(&self) -> Vec<String> {
        model_repo::catalog(&self.0)
    }

    fn read(&self, name: &str, config: Option<&str>) -> Result<Model, CatalogError> {
        Model::read(&self.0, name, config).map_err(|e| match e {
            RepoError::Repository(m) => CatalogError::NotFound(m),
            other => CatalogError::Invalid(other.to_string()),
        })
    }
}
