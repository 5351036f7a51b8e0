//! Procedural macros of switchyard. Not for direct use; see the `switchyard` crate.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::{
    parse_macro_input, FnArg, GenericArgument, ItemTrait, Pat, PathArguments, ReturnType,
    TraitItem, Type,
};

/// Turns a trait of `async fn`s into a typed contract: the trait (with `Send` futures), a
/// provided `into_service(self, name)` that registers every method as a route `/<method>`
/// with its argument names, and a `<Trait>Client` whose methods call those routes on any
/// transport. See the `switchyard` crate for an example.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[switchyard::service] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let input = parse_macro_input!(item as ItemTrait);
    match expand(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

struct Method {
    name: syn::Ident,
    attrs: Vec<syn::Attribute>,
    args: Vec<(syn::Ident, Type)>,
    output: Type,
    /// `T` when the method returns `Result<T, E>`.
    ok_type: Option<Type>,
}

fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

fn expand(input: ItemTrait) -> syn::Result<TokenStream2> {
    let vis = &input.vis;
    let trait_name = &input.ident;
    let trait_attrs = &input.attrs;
    let client_name = format_ident!("{}Client", trait_name);
    let mut methods = Vec::new();
    for item in &input.items {
        let TraitItem::Fn(f) = item else {
            return Err(syn::Error::new_spanned(
                item,
                "a switchyard service trait holds only async methods",
            ));
        };
        let sig = &f.sig;
        if sig.asyncness.is_none() {
            return Err(syn::Error::new_spanned(
                sig,
                "service methods must be `async fn`",
            ));
        }
        if f.default.is_some() {
            return Err(syn::Error::new_spanned(
                f,
                "service methods have no default body",
            ));
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
            _ => {
                return Err(syn::Error::new_spanned(
                    sig,
                    "service methods take `&self` first",
                ))
            }
        }
        let mut args = Vec::new();
        for arg in inputs {
            let FnArg::Typed(pt) = arg else {
                unreachable!("only the first argument is a receiver")
            };
            let Pat::Ident(id) = &*pt.pat else {
                return Err(syn::Error::new_spanned(
                    &pt.pat,
                    "arguments must be plain names (they become keyword names)",
                ));
            };
            args.push((id.ident.clone(), (*pt.ty).clone()));
        }
        if args.len() > 8 {
            return Err(syn::Error::new_spanned(sig, "at most 8 arguments"));
        }
        let output: Type = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, t) => (**t).clone(),
        };
        methods.push(Method {
            name: sig.ident.clone(),
            attrs: f.attrs.clone(),
            ok_type: result_ok_type(&output),
            args,
            output,
        });
    }

    let trait_methods = methods.iter().map(|m| {
        let (name, attrs, output) = (&m.name, &m.attrs, &m.output);
        let args = m.args.iter().map(|(n, t)| quote!(#n: #t));
        quote! {
            #(#attrs)*
            fn #name(&self, #(#args),*) -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
        }
    });

    let registrations = methods.iter().map(|m| {
        let name = &m.name;
        let route = format!("/{name}");
        let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
        let name_strs: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let types = m.args.iter().map(|(_, t)| t);
        let call = if m.ok_type.is_some() {
            quote!(this.#name(#(#names),*).await)
        } else {
            quote!(::switchyard::Json(this.#name(#(#names),*).await))
        };
        quote! {
            .route(#route, ::switchyard::rpc({
                let this = this.clone();
                move |#(#names: #types),*| {
                    let this = this.clone();
                    async move { #call }
                }
            }).params([#(#name_strs),*]))
        }
    });

    let client_methods = methods.iter().map(|m| {
        let (name, attrs) = (&m.name, &m.attrs);
        let route = format!("/{name}");
        let args = m.args.iter().map(|(n, t)| quote!(#n: #t));
        let names = m.args.iter().map(|(n, _)| n);
        let ok = m.ok_type.clone().unwrap_or_else(|| m.output.clone());
        quote! {
            #(#attrs)*
            pub async fn #name(&self, #(#args),*) -> ::core::result::Result<#ok, ::switchyard::CallError> {
                self.client.call(#route, (#(#names,)*)).await
            }
        }
    });

    let client_doc = format!(
        "Typed client of [`{trait_name}`]: each method calls its route on the client's transport."
    );
    Ok(quote! {
        #(#trait_attrs)*
        #vis trait #trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*

            /// A service named `name` that answers every method of this trait as the route
            /// `/<method>`, taking arguments by position or by name.
            fn into_service(self, name: &str) -> ::switchyard::Service
            where
                Self: ::core::marker::Sized,
            {
                let this = ::std::sync::Arc::new(self);
                ::switchyard::Service::new(name) #(#registrations)*
            }
        }

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client_name {
            client: ::switchyard::Client,
        }

        impl #client_name {
            /// A typed client over `client`.
            pub fn new(client: ::switchyard::Client) -> Self {
                Self { client }
            }

            /// The untyped client underneath.
            pub fn inner(&self) -> &::switchyard::Client {
                &self.client
            }

            #(#client_methods)*
        }
    })
}
