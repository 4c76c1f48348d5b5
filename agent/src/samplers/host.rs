//! Host sampler: CPU, memory, swap, load, filesystems, network, boot time,
//! read from /proc with node_exporter's names and meaning.
