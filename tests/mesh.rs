//! Full-mesh ICMP rounds over the lab (filled in below as the lab API lands).
