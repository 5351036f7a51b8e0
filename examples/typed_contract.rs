//! One trait, both sides: `#[switchyard::service]` generates the route registration and a
//! typed client. Served over HTTP on loopback here; any transport URL works the same.
//!
//! `cargo run --example typed_contract`

use serde::{Deserialize, Serialize};
use switchyard::HandlerError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Book {
    pub title: String,
    pub pages: u32,
}

#[switchyard::service]
pub trait Bookshelf {
    /// Adds a book; returns how many books there are now.
    async fn add(&self, book: Book) -> usize;
    /// The last `n` books added.
    async fn last(&self, n: usize) -> Vec<Book>;
    /// The book with this title.
    async fn find(&self, title: String) -> Result<Book, HandlerError>;
}

#[derive(Default)]
struct Shelf(tokio::sync::Mutex<Vec<Book>>);

impl Bookshelf for Shelf {
    async fn add(&self, book: Book) -> usize {
        let mut books = self.0.lock().await;
        books.push(book);
        books.len()
    }
    async fn last(&self, n: usize) -> Vec<Book> {
        let books = self.0.lock().await;
        books.iter().rev().take(n).cloned().collect()
    }
    async fn find(&self, title: String) -> Result<Book, HandlerError> {
        let books = self.0.lock().await;
        books
            .iter()
            .find(|b| b.title == title)
            .cloned()
            .ok_or_else(|| {
                HandlerError::new(
                    switchyard::ErrorCode::NotFound,
                    format!("no book {title:?}"),
                )
            })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = switchyard::serve(
        &switchyard::connect("http://127.0.0.1:0")?,
        Shelf::default().into_service("bookshelf"),
    )
    .await?;
    let shelf = BookshelfClient::new(
        switchyard::Client::new(switchyard::connect(server.url())?).service("bookshelf"),
    );

    shelf
        .add(Book {
            title: "Antifragile Software".into(),
            pages: 200,
        })
        .await?;
    let count = shelf
        .add(Book {
            title: "Release It!".into(),
            pages: 350,
        })
        .await?;
    println!("books on the shelf: {count}");
    println!("last read: {:?}", shelf.last(1).await?);
    match shelf.find("Dune".into()).await {
        Err(e) => println!("find Dune: {e}"),
        Ok(b) => println!("found {b:?}"),
    }
    server.shutdown().await;
    Ok(())
}
