//! The adversarial suite: procpy against a hostile local user, a peer sending garbage, a program
//! that runs out of descriptors, processes or memory, and kills mid-operation. Each test guards
//! one guarantee of docs/reliability.md; each module owns one attack surface.

mod embed;
mod forkserver;
mod frames;
mod kills;
mod leaks;
