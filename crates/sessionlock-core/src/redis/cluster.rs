//! Reading Redis Cluster replies: which nodes are masters (the SCAN walk visits each).

/// `(host, port)` of every master that is not failed, from a `CLUSTER NODES` reply.
#[must_use]
pub fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_id, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let is_master = flags.split(',').any(|x| x == "master");
            let failed = flags.split(',').any(|x| x == "fail" || x == "fail?");
            if !is_master || failed {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_from_cluster_nodes() {
        let nodes = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:7001@17001 slave a 0 0 1 connected\n\
                     c 127.0.0.1:7002@17002,host master,fail - 0 0 2 connected\n\
                     d 127.0.0.1:7003@17003 master - 0 0 3 connected 5461-16383\n";
        assert_eq!(
            masters(nodes),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7003)]
        );
    }
}
