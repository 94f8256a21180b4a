package dev.skewless.flink;

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManagerFactory;
import redis.clients.jedis.ClientSetInfoConfig;
import redis.clients.jedis.CommandArguments;
import redis.clients.jedis.Connection;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Protocol;
import redis.clients.jedis.exceptions.JedisAskDataException;
import redis.clients.jedis.exceptions.JedisDataException;
import redis.clients.jedis.exceptions.JedisException;
import redis.clients.jedis.exceptions.JedisMovedDataException;
import redis.clients.jedis.util.JedisClusterCRC16;
import redis.clients.jedis.util.SafeEncoder;

/**
 * The sink's Redis: one Redis or a Redis Cluster, through Jedis ({@link Connection}: RESP, TLS with host name
 * verification, AUTH, SELECT, connect and read timeouts; {@link JedisClusterCRC16}: hash slots). Commands are
 * pipelined per master node, each master on one connection of its own, so {@code WAIT} on that connection covers
 * every write the sink made there ({@link #confirmReplicated}); JedisCluster's pooled connections could not promise
 * that. On a cluster a {@code MOVED} reply updates the slot's owner and the command is sent again, {@code ASK} sends
 * it once to the importing node after {@code ASKING}, {@code TRYAGAIN}/{@code CLUSTERDOWN} and a node that cannot
 * be reached (a failover) are retried with the topology read again ({@code CLUSTER SLOTS}) until {@code retry_ms}
 * have passed. Every write is idempotent (the tile CAS), so sending a command again is safe; but a master that
 * acknowledged writes since the last {@link #confirmReplicated} and then breaks may have lost them (its replica
 * was promoted before they arrived): that is an {@link IOException}, so the checkpoint fails and the job replays
 * from the last one. A single Redis takes the same path with every slot on its one node.
 */
public final class RedisNodes implements RedisTileSink.Store {
    public static final int SLOTS = 16384;

    /** One command; {@code slot} routes it on a cluster (ignored on a single Redis). */
    public static final class Command {
        final int slot;
        final String[] args;

        public Command(int slot, String... args) {
            this.slot = slot;
            this.args = args;
        }

        public Command(int slot, List<String> args) {
            this(slot, args.toArray(new String[0]));
        }
    }

    private final DefaultJedisClientConfig clientConfig;
    private final boolean cluster;
    private final List<HostAndPort> seeds;
    private final long retryMs;
    private final int waitMs;
    private final HostAndPort[] owner = new HostAndPort[SLOTS];
    private final Map<HostAndPort, Integer> replicas = new HashMap<>();
    private final Map<HostAndPort, Connection> connections = new LinkedHashMap<>();
    private final Set<HostAndPort> unconfirmed = new LinkedHashSet<>();
    private final Map<String, String> scripts = new HashMap<>();  // sha -> body

    private RedisNodes(DefaultJedisClientConfig clientConfig, boolean cluster, List<HostAndPort> seeds, long retryMs,
                       int waitMs) {
        this.clientConfig = clientConfig;
        this.cluster = cluster;
        this.seeds = seeds;
        this.retryMs = retryMs;
        this.waitMs = waitMs;
    }

    /**
     * The Redis the sink spec's {@code redis} object names (streaming_jobs.sink.redis_endpoint: {@code cluster},
     * {@code nodes} or {@code host}/{@code port}/{@code db}, {@code username}, {@code password}, {@code tls},
     * {@code tls_ca_file}, {@code connect_timeout_ms}, {@code timeout_ms}, {@code retry_ms}), connected, its
     * topology read. A cluster name pointing at a plain Redis, or the reverse, is one clear error.
     */
    public static RedisNodes open(Map<String, Object> spec) throws IOException {
        int connectMs = intOf(spec, "connect_timeout_ms", 3000);
        int readMs = intOf(spec, "timeout_ms", 5000);
        DefaultJedisClientConfig.Builder b = DefaultJedisClientConfig.builder().resp2()
            .connectionTimeoutMillis(connectMs).socketTimeoutMillis(readMs)
            .clientSetInfoConfig(ClientSetInfoConfig.DISABLED);
        if (spec.get("password") instanceof String) {
            b.password((String) spec.get("password"));
            if (spec.get("username") instanceof String) {
                b.user((String) spec.get("username"));
            }
        }
        if (Boolean.TRUE.equals(spec.get("tls"))) {
            SSLParameters params = new SSLParameters();
            params.setEndpointIdentificationAlgorithm("HTTPS");
            b.ssl(true).sslSocketFactory(tlsFactory((String) spec.get("tls_ca_file"))).sslParameters(params);
        }
        boolean cluster = Boolean.TRUE.equals(spec.get("cluster"));
        List<HostAndPort> seeds = new ArrayList<>();
        if (cluster) {
            for (String node : TileEncoder.strings(spec.get("nodes"))) {
                seeds.add(HostAndPort.from(node));
            }
        } else {
            b.database(intOf(spec, "db", 0));
            seeds.add(new HostAndPort((String) spec.get("host"), intOf(spec, "port", 6379)));
        }
        // the sink retries a failover this long (Redis Cluster's node timeout is 5 s on the stack), WAITs half a read
        long retryMs = spec.get("retry_ms") instanceof Long ? (Long) spec.get("retry_ms") : 30_000L;
        RedisNodes nodes = new RedisNodes(b.build(), cluster, seeds, retryMs, Math.max(100, readMs / 2));
        try {
            nodes.discover();
        } catch (IOException | RuntimeException e) {
            nodes.close();
            throw e;
        }
        return nodes;
    }

    private static int intOf(Map<String, Object> spec, String key, int otherwise) {
        return spec.get(key) instanceof Long ? ((Long) spec.get(key)).intValue() : otherwise;
    }

    /** The JVM's default TLS factory, or one that trusts exactly the certificates of {@code caFile} (PEM). */
    static SSLSocketFactory tlsFactory(String caFile) throws IOException {
        if (caFile == null) {
            return (SSLSocketFactory) SSLSocketFactory.getDefault();
        }
        try (InputStream pem = new FileInputStream(caFile)) {
            KeyStore trusted = KeyStore.getInstance(KeyStore.getDefaultType());
            trusted.load(null, null);
            int i = 0;
            for (Certificate c : CertificateFactory.getInstance("X.509").generateCertificates(pem)) {
                trusted.setCertificateEntry("ca" + i++, c);
            }
            TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            tmf.init(trusted);
            SSLContext context = SSLContext.getInstance("TLS");
            context.init(null, tmf.getTrustManagers(), null);
            return context.getSocketFactory();
        } catch (GeneralSecurityException e) {
            throw new IOException("redis TLS: cannot use the CA file " + caFile + ": " + e.getMessage(), e);
        }
    }

    public boolean isCluster() {
        return cluster;
    }

    /** The key's hash slot on a cluster; 0 on a single Redis (every key on its one node). */
    @Override
    public int slot(String key) {
        return cluster ? JedisClusterCRC16.getSlot(key) : 0;
    }

    /** The masters that serve slots now. */
    public List<HostAndPort> masters() {
        return new ArrayList<>(replicas.keySet());
    }

    /** {@code SCRIPT LOAD} on every master (and again on one that answers {@code NOSCRIPT}); its SHA1. */
    @Override
    public String script(String body) throws IOException {
        String sha = null;
        for (HostAndPort m : masters()) {
            sha = SafeEncoder.encode((byte[]) callOn(m, "SCRIPT", "LOAD", body));
        }
        scripts.put(sha, body);
        return sha;
    }

    /** One command on one node; an error reply raises. */
    public Object callOn(HostAndPort node, String... args) throws IOException {
        try {
            return connection(node).executeCommand(arguments(args));
        } catch (JedisDataException e) {
            throw new IOException("redis " + args[0] + " on " + node + ": " + e.getMessage(), e);
        } catch (JedisException e) {
            drop(node);
            throw new IOException("redis " + node + ": " + e.getMessage(), e);
        }
    }

    /** One command routed by its key; an error reply raises. */
    public Object call(String key, String... args) throws IOException {
        Object r = pipeline(List.of(new Command(slot(key), args))).get(0);
        if (r instanceof JedisDataException) {
            throw new IOException("redis " + args[0] + ": " + ((JedisDataException) r).getMessage());
        }
        return r;
    }

    /**
     * Send the commands, pipelined per master (all masters written first, then their replies read), and return one
     * reply per command in order: a value, or a {@link JedisDataException} for an error reply other than the
     * redirects and retries this class handles.
     */
    @Override
    public List<Object> pipeline(List<Command> commands) throws IOException {
        Object[] replies = new Object[commands.size()];
        HostAndPort[] ask = new HostAndPort[commands.size()];
        List<Integer> pending = new ArrayList<>(commands.size());
        for (int i = 0; i < commands.size(); i++) {
            pending.add(i);
        }
        long deadline = System.currentTimeMillis() + retryMs;
        long backoff = 20;
        String why = null;
        boolean redirected = false;
        while (!pending.isEmpty()) {
            if (why != null) {
                if (System.currentTimeMillis() > deadline) {
                    throw new IOException("redis: writes did not settle within " + retryMs + " ms: " + why);
                }
                if (!redirected) {  // a redirect is followed at once; anything else waits, longer each time
                    sleep(backoff);
                    backoff = Math.min(backoff * 2, 1000);
                }
            }
            why = null;
            redirected = false;
            Map<HostAndPort, List<Integer>> byNode = new LinkedHashMap<>();
            boolean refresh = false;
            for (int i : pending) {
                HostAndPort node = ask[i] != null ? ask[i] : owner(commands.get(i).slot);
                if (node == null) {
                    refresh = true;
                    why = "slot " + commands.get(i).slot + " is not served by any master";
                    continue;
                }
                byNode.computeIfAbsent(node, n -> new ArrayList<>()).add(i);
            }
            List<Integer> again = new ArrayList<>();
            Set<HostAndPort> reload = new LinkedHashSet<>();
            IOException lost = null;  // raised once every sent pipeline's replies are read (connections stay in sync)
            Map<HostAndPort, Connection> sent = new LinkedHashMap<>();
            for (Map.Entry<HostAndPort, List<Integer>> e : byNode.entrySet()) {
                try {
                    Connection c = connection(e.getKey());
                    for (int i : e.getValue()) {
                        if (ask[i] != null) {
                            c.sendCommand(Protocol.Command.ASKING);
                        }
                        c.sendCommand(arguments(commands.get(i).args));
                    }
                    sent.put(e.getKey(), c);
                } catch (JedisException | IOException ex) {
                    lost = lost != null ? lost : nodeFailed(e.getKey(), ex);
                    again.addAll(e.getValue());
                    refresh = true;
                    why = e.getKey() + ": " + ex.getMessage();
                }
            }
            for (Map.Entry<HostAndPort, Connection> e : sent.entrySet()) {
                List<Integer> idx = byNode.get(e.getKey());
                int expected = idx.size();
                for (int i : idx) {
                    expected += ask[i] != null ? 1 : 0;
                }
                List<Object> got;
                try {
                    got = e.getValue().getMany(expected);
                } catch (JedisException ex) {
                    lost = lost != null ? lost : nodeFailed(e.getKey(), ex);
                    again.addAll(idx);
                    refresh = true;
                    why = e.getKey() + ": " + ex.getMessage();
                    continue;
                }
                unconfirmed.add(e.getKey());
                int r = 0;
                for (int i : idx) {
                    if (ask[i] != null) {
                        r++;  // ASKING's OK
                        ask[i] = null;
                    }
                    Object reply = got.get(r++);
                    if (reply instanceof JedisMovedDataException) {
                        JedisMovedDataException moved = (JedisMovedDataException) reply;
                        owner[moved.getSlot()] = moved.getTargetNode();
                        refresh = true;  // a failover or a resharding: read the whole map again
                        again.add(i);
                    } else if (reply instanceof JedisAskDataException) {
                        ask[i] = ((JedisAskDataException) reply).getTargetNode();
                        again.add(i);
                    } else if (reply instanceof JedisDataException && retryable(((JedisDataException) reply).getMessage())) {
                        why = e.getKey() + ": " + ((JedisDataException) reply).getMessage();
                        refresh = true;
                        again.add(i);
                    } else if (reply instanceof JedisDataException && noScript((JedisDataException) reply, commands.get(i))) {
                        reload.add(e.getKey());  // the node restarted (or is a promoted replica): load the scripts again
                        again.add(i);
                    } else {
                        replies[i] = reply;
                    }
                }
            }
            if (lost != null) {
                throw lost;
            }
            for (HostAndPort node : reload) {
                for (String body : scripts.values()) {
                    callOn(node, "SCRIPT", "LOAD", body);
                }
            }
            if (refresh) {
                try {
                    discover();
                } catch (IOException ex) {
                    why = ex.getMessage();
                }
            }
            if (why == null && !again.isEmpty()) {
                why = "redirected";
                redirected = true;
            }
            again.sort(null);
            pending = again;
        }
        return Arrays.asList(replies);
    }

    private static boolean retryable(String message) {
        return message != null && (message.startsWith("TRYAGAIN") || message.startsWith("CLUSTERDOWN")
            || message.startsWith("LOADING") || message.startsWith("MASTERDOWN"));
    }

    private boolean noScript(JedisDataException e, Command c) {
        return e.getMessage() != null && e.getMessage().startsWith("NOSCRIPT") && c.args.length > 1
            && "EVALSHA".equalsIgnoreCase(c.args[0]) && scripts.containsKey(c.args[1]);
    }

    /**
     * Block until every master written since the last call has passed the writes to a replica ({@code WAIT 1}),
     * where the topology gives it replicas; a single Redis without replicas has nothing to wait for. A master that
     * cannot confirm within the wait (or broke since) raises: the checkpoint fails rather than count writes a
     * promoted replica might lack.
     */
    @Override
    public void confirmReplicated() throws IOException {
        for (HostAndPort node : unconfirmed) {
            Integer want = replicas.get(node);
            if (want == null) {
                throw new IOException("redis " + node + " is no longer a master serving slots (a failover); writes "
                    + "acknowledged there since the last checkpoint are not confirmed on its successor");
            }
            if (want == 0) {
                continue;
            }
            Object got = callOn(node, "WAIT", "1", Integer.toString(waitMs));
            if (!(got instanceof Long) || (Long) got < 1) {
                throw new IOException("redis " + node + ": no replica acknowledged the sink's writes within " + waitMs
                    + " ms (WAIT 1); the checkpoint fails and the job replays from the last one");
            }
        }
        unconfirmed.clear();
    }

    /** A node whose connection broke is forgotten; the error to raise if it held unconfirmed writes, else null. */
    private IOException nodeFailed(HostAndPort node, Exception cause) {
        drop(node);
        if (unconfirmed.contains(node)) {
            return new IOException("redis " + node + " failed with writes acknowledged since the last checkpoint not "
                + "yet confirmed on a replica (" + cause.getMessage() + "); the job replays from the last checkpoint",
                cause);
        }
        return null;
    }

    private HostAndPort owner(int slot) {
        return cluster ? owner[slot] : seeds.get(0);
    }

    private Connection connection(HostAndPort node) throws IOException {
        Connection c = connections.get(node);
        if (c != null && !c.isBroken()) {
            return c;
        }
        drop(node);
        try {
            c = new Connection(node, clientConfig);
            c.connect();
        } catch (JedisDataException e) {
            throw new IOException("redis AUTH: " + e.getMessage() + " (node " + node + ")", e);
        } catch (JedisException e) {
            throw new IOException("redis " + node + " cannot be reached: " + e.getMessage()
                + "; check that it runs and the profile's online_store names it", e);
        }
        connections.put(node, c);
        return c;
    }

    private void drop(HostAndPort node) {
        Connection c = connections.remove(node);
        if (c != null) {
            try {
                c.close();
            } catch (RuntimeException ignored) {
                // a broken connection may fail to close; it is gone either way
            }
        }
    }

    /**
     * Read the topology: a single Redis must not be a cluster node, and its replicas come from {@code INFO
     * replication}; a cluster's slot owners and replicas from {@code CLUSTER SLOTS} of the first node that answers
     * (a seed or a known master). Every slot must be served.
     */
    private void discover() throws IOException {
        if (!cluster) {
            HostAndPort node = seeds.get(0);
            String info;
            try {
                info = SafeEncoder.encode((byte[]) callOn(node, "INFO", "replication"))
                    + SafeEncoder.encode((byte[]) callOn(node, "INFO", "cluster"));
            } catch (IOException e) {
                if (!connections.containsKey(node)) {
                    throw e;  // not reached at all
                }
                System.err.println("skewless sink: cannot read INFO of Redis " + node + " (" + e.getMessage() + "); "
                    + "writes are not confirmed on replicas (WAIT) there");
                info = "";
            }
            if (info.contains("cluster_enabled:1")) {
                throw new IOException("the Redis at " + node + " is a Redis Cluster node: name the cluster "
                    + "(online_store type redis_cluster, or redis+cluster://" + node + ")");
            }
            replicas.clear();
            replicas.put(node, field(info, "connected_slaves"));
            return;
        }
        Set<HostAndPort> candidates = new LinkedHashSet<>(replicas.keySet());
        candidates.addAll(seeds);
        List<String> problems = new ArrayList<>();
        for (HostAndPort node : candidates) {
            List<?> slots;
            try {
                slots = (List<?>) connection(node).executeCommand(arguments("CLUSTER", "SLOTS"));
            } catch (JedisDataException e) {
                String m = String.valueOf(e.getMessage());
                if (m.contains("cluster support disabled")) {
                    throw new IOException("the Redis at " + node + " is not a cluster (cluster support disabled): "
                        + "name it as one Redis (online_store type redis, redis://" + node + ")");
                }
                problems.add(node + ": " + m);
                continue;
            } catch (JedisException | IOException e) {
                drop(node);
                problems.add(node + ": " + e.getMessage());
                continue;
            }
            HostAndPort[] map = new HostAndPort[SLOTS];
            Map<HostAndPort, Integer> reps = new LinkedHashMap<>();
            for (Object entry : slots) {
                List<?> e = (List<?>) entry;
                HostAndPort master = address((List<?>) e.get(2), node);
                for (int s = ((Long) e.get(0)).intValue(); s <= ((Long) e.get(1)).intValue(); s++) {
                    map[s] = master;
                }
                reps.merge(master, e.size() - 3, Math::max);
            }
            for (int s = 0; s < SLOTS; s++) {
                if (map[s] == null) {
                    throw new IOException("redis cluster (asked " + node + "): hash slot " + s + " is not served by any "
                        + "master; fix the cluster (redis-cli --cluster fix " + node + ")");
                }
            }
            System.arraycopy(map, 0, owner, 0, SLOTS);
            replicas.clear();
            replicas.putAll(reps);
            for (HostAndPort known : new ArrayList<>(connections.keySet())) {
                if (!reps.containsKey(known)) {
                    drop(known);  // a demoted or removed master: its writes are covered by the unconfirmed check
                }
            }
            return;
        }
        throw new IOException("redis cluster: no node answers CLUSTER SLOTS (" + String.join("; ", problems)
            + "); check the profile's online_store nodes");
    }

    private static HostAndPort address(List<?> node, HostAndPort asked) {
        String host = SafeEncoder.encode((byte[]) node.get(0));
        return new HostAndPort(host.isEmpty() || "?".equals(host) ? asked.getHost() : host, ((Long) node.get(1)).intValue());
    }

    private static int field(String info, String name) {
        for (String line : info.split("\r?\n")) {
            if (line.startsWith(name + ":")) {
                return Integer.parseInt(line.substring(name.length() + 1).trim());
            }
        }
        return 0;
    }

    private static CommandArguments arguments(String... args) {
        CommandArguments a = new CommandArguments(Protocol.Command.valueOf(args[0].toUpperCase()));
        for (int i = 1; i < args.length; i++) {
            a.add(args[i]);
        }
        return a;
    }

    private static void sleep(long ms) throws IOException {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while retrying a redis write", e);
        }
    }

    /**
     * Tests: {@code RedisNodes <redis spec JSON> COMMAND [KEY [ARG...]]} prints the reply of the command, routed by
     * its first argument (an error exits 1). With the spec alone it reads commands from stdin, one per line (words
     * split at spaces; {@code CONFIRM} is {@link #confirmReplicated}), and prints one line per command: the reply, or
     * {@code ERR <message>}.
     */
    public static void main(String[] args) throws Exception {
        @SuppressWarnings("unchecked")
        Map<String, Object> spec = (Map<String, Object>) Json.parse(args[0]);
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        try (RedisNodes redis = open(spec)) {
            if (args.length > 1) {
                out.println(text(redis.call(args.length > 2 ? args[2] : "", Arrays.copyOfRange(args, 1, args.length))));
                return;
            }
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                String[] words = line.trim().split(" +");
                try {
                    if ("CONFIRM".equals(words[0])) {
                        redis.confirmReplicated();
                        out.println("OK");
                    } else {
                        out.println(text(redis.call(words.length > 1 ? words[1] : "", words)));
                    }
                } catch (IOException e) {
                    out.println("ERR " + String.valueOf(e.getMessage()).replace('\n', ' '));
                }
            }
        }
    }

    private static String text(Object reply) {
        return reply instanceof byte[] ? SafeEncoder.encode((byte[]) reply) : String.valueOf(reply);
    }

    @Override
    public void close() {
        for (HostAndPort node : new ArrayList<>(connections.keySet())) {
            drop(node);
        }
    }
}
