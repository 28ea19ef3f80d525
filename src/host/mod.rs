//! Reading the host: kernel release, MTU, offloads, OVS and AF_XDP
//! availability, and the datapath decision made from them.
