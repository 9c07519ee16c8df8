//! `#[multiproc::task]`: names a function so that another program can run
//! it: a multiproc cluster agent on another machine, or the pool a
//! multiproc manager serves (`manager.pool(n)`).
//!
//! Use it through `multiproc` (`#[multiproc::task]`), not from this crate.
//! The attribute adds an entry to a table the linker assembles (a `linkme`
//! distributed slice): the function's stable name (its module path and
//! name, or the `name = "…"` given) and what the agent or the manager
//! needs to run it.

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::{ItemFn, LitStr, parse_macro_input};

/// Registers a `fn(A) -> R` under a stable name, for the cluster backend
/// and for a manager's pool.
///
/// `#[multiproc::task]` names it `module::path::function`;
/// `#[multiproc::task(name = "render.tile")]` gives the name. The function
/// must take exactly one argument and have no generic parameters. It is
/// never inlined (the attribute adds `#[inline(never)]` and refuses
/// `#[inline]`): a pool finds it by its address, which must be one.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown argument: #[multiproc::task] takes only `name = \"…\"`"))
        }
    });
    if let Err(e) = parser.parse(attr) {
        return e.to_compile_error().into();
    }
    let mut func = parse_macro_input!(item as ItemFn);
    if let Err(e) = check(&func) {
        return e.to_compile_error().into();
    }
    // One function, one address. The pool finds a task by the address of
    // the function it is given; but an optimised build may give a small
    // function a copy of its own in every codegen unit (and every crate)
    // that uses it, each at another address, so the address taken here
    // would not be the one a caller passes elsewhere. A function never
    // inlined has one definition, which every caller's pointer names.
    if !func.attrs.iter().any(|a| a.path().is_ident("inline")) {
        func.attrs.push(syn::parse_quote!(#[inline(never)]));
    }
    let ident = &func.sig.ident;
    let name = match name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    quote! {
        #func
        // The table entry is a `link_section` static (linkme's), which the
        // `unsafe_code` lint flags though it is no unsafe code of the
        // user's: a crate that denies it can register tasks all the same.
        #[allow(unsafe_code)]
        const _: () = {
            fn __multiproc_resolve() -> ::multiproc::__private::Resolved {
                ::multiproc::__private::Resolved::new(#ident as fn(_) -> _)
            }
            #[::multiproc::__private::linkme::distributed_slice(::multiproc::__private::TASKS)]
            #[linkme(crate = ::multiproc::__private::linkme)]
            static __MULTIPROC_TASK: ::multiproc::__private::TaskEntry =
                ::multiproc::__private::TaskEntry::new(#name, __multiproc_resolve);
        };
    }
    .into()
}

/// Refuses what a pool cannot run: a generic function (no single
/// instantiation to register), one that does not take one argument, or one
/// asked to be inlined (no single address to find it by).
fn check(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[multiproc::task] cannot register a generic function: write a non-generic wrapper",
        ));
    }
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "#[multiproc::task] needs a function of exactly one argument, as a Pool runs \
             (a tuple for several)",
        ));
    }
    if let Some(r) = &sig.receiver() {
        return Err(syn::Error::new_spanned(
            r,
            "#[multiproc::task] cannot register a method",
        ));
    }
    if let Some(a) = func.attrs.iter().find(|a| a.path().is_ident("inline")) {
        let never = a
            .parse_args::<syn::Ident>()
            .is_ok_and(|word| word == "never");
        if !never {
            return Err(syn::Error::new_spanned(
                a,
                "#[multiproc::task] functions are never inlined: a pool finds them by \
                 address, and an inlined function has a copy (an address) per call site",
            ));
        }
    }
    if sig.asyncness.is_some() || sig.unsafety.is_some() {
        return Err(syn::Error::new_spanned(
            sig,
            "#[multiproc::task] registers plain (not async, not unsafe) functions",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn an_inlined_task_is_refused() {
        let f: syn::ItemFn = syn::parse_quote!(
            #[inline]
            fn f(x: u64) -> u64 {
                x
            }
        );
        assert!(check(&f).is_err());
        let f: syn::ItemFn = syn::parse_quote!(
            #[inline(always)]
            fn f(x: u64) -> u64 {
                x
            }
        );
        assert!(check(&f).is_err());
        let f: syn::ItemFn = syn::parse_quote!(
            #[inline(never)]
            fn f(x: u64) -> u64 {
                x
            }
        );
        assert!(check(&f).is_ok());
        let f: syn::ItemFn = syn::parse_quote!(
            fn f(x: u64) -> u64 {
                x
            }
        );
        assert!(check(&f).is_ok());
    }
}
