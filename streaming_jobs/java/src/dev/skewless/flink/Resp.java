package dev.skewless.flink;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.EOFException;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManagerFactory;

/**
 * A minimal Redis client for the sink: RESP2 commands written back to back (a pipeline), then their replies
 * read in order. Error replies are returned as {@link Error} values so a caller can react per command
 * (e.g. {@code NOSCRIPT}); a broken connection raises {@link IOException} and the job restarts from its
 * checkpoint (the writes are idempotent). Over TLS ({@code rediss://}) the server's certificate and host name
 * are verified against the JVM's trust store, or against the CA file the spec names.
 */
public final class Resp implements AutoCloseable {
    /** An error reply ({@code -ERR ...}). */
    public static final class Error {
        public final String message;

        Error(String message) {
            this.message = message;
        }

        @Override
        public String toString() {
            return message;
        }
    }

    private static final byte[] CRLF = {'\r', '\n'};
    private final Socket socket;
    private final OutputStream out;
    private final InputStream in;
    private int pending;

    public Resp(String host, int port, int timeoutMs) throws IOException {
        this(host, port, timeoutMs, null);
    }

    /** {@code tls}: null for plain TCP, else the factory of the TLS session (host name verified). */
    public Resp(String host, int port, int timeoutMs, SSLSocketFactory tls) throws IOException {
        this(host, port, timeoutMs, timeoutMs, tls);
    }

    /** {@code connectTimeoutMs} bounds the TCP connect, {@code timeoutMs} every read (a hung Redis fails the call). */
    public Resp(String host, int port, int connectTimeoutMs, int timeoutMs, SSLSocketFactory tls) throws IOException {
        Socket plain = new Socket();
        plain.setTcpNoDelay(true);
        plain.setSoTimeout(timeoutMs);
        plain.connect(new InetSocketAddress(host, port), connectTimeoutMs);
        if (tls == null) {
            socket = plain;
        } else {
            SSLSocket s = (SSLSocket) tls.createSocket(plain, host, port, true);
            SSLParameters params = s.getSSLParameters();
            params.setEndpointIdentificationAlgorithm("HTTPS");
            s.setSSLParameters(params);
            s.startHandshake();
            socket = s;
        }
        out = new BufferedOutputStream(socket.getOutputStream(), 1 << 16);
        in = new BufferedInputStream(socket.getInputStream(), 1 << 16);
    }

    /**
     * A logged-in connection as the sink spec's {@code redis} object describes it ({@code host}, {@code port},
     * {@code db}, {@code username}, {@code password}, {@code tls}, {@code tls_ca_file}, {@code connect_timeout_ms},
     * {@code timeout_ms}; streaming_jobs.sink). {@code defaultTimeoutMs}: both timeouts when the spec has none.
     */
    public static Resp open(Map<String, Object> spec, int defaultTimeoutMs) throws IOException {
        SSLSocketFactory tls = Boolean.TRUE.equals(spec.get("tls")) ? tlsFactory((String) spec.get("tls_ca_file")) : null;
        int connectMs = spec.get("connect_timeout_ms") instanceof Long ? ((Long) spec.get("connect_timeout_ms")).intValue() : defaultTimeoutMs;
        int readMs = spec.get("timeout_ms") instanceof Long ? ((Long) spec.get("timeout_ms")).intValue() : defaultTimeoutMs;
        Resp redis = new Resp((String) spec.get("host"), ((Long) spec.get("port")).intValue(), connectMs, readMs, tls);
        Object password = spec.get("password");
        if (password instanceof String) {
            Object user = spec.get("username");
            if (user instanceof String) {
                redis.call("AUTH", (String) user, (String) password);
            } else {
                redis.call("AUTH", (String) password);
            }
        }
        long db = (Long) spec.get("db");
        if (db != 0) {
            redis.call("SELECT", Long.toString(db));
        }
        return redis;
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

    /** Tests: {@code Resp <redis spec JSON> COMMAND [ARG...]} prints the reply (an error reply exits 1). */
    public static void main(String[] args) throws Exception {
        @SuppressWarnings("unchecked")
        Map<String, Object> spec = (Map<String, Object>) Json.parse(args[0]);
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        try (Resp redis = open(spec, 10_000)) {
            out.println(redis.call(Arrays.copyOfRange(args, 1, args.length)));
        }
    }

    /** Queue one command (its reply is read by {@link #replies()}). */
    public void command(List<String> args) throws IOException {
        out.write('*');
        out.write(Integer.toString(args.size()).getBytes(StandardCharsets.US_ASCII));
        out.write(CRLF);
        for (String a : args) {
            byte[] b = a.getBytes(StandardCharsets.UTF_8);
            out.write('$');
            out.write(Integer.toString(b.length).getBytes(StandardCharsets.US_ASCII));
            out.write(CRLF);
            out.write(b);
            out.write(CRLF);
        }
        pending++;
    }

    /** Send the queued commands and read one reply per command, in order. */
    public List<Object> replies() throws IOException {
        out.flush();
        List<Object> replies = new ArrayList<>(pending);
        for (; pending > 0; pending--) {
            replies.add(reply());
        }
        return replies;
    }

    /** One command, sent and answered; an error reply raises. */
    public Object call(String... args) throws IOException {
        command(List.of(args));
        Object r = replies().get(0);
        if (r instanceof Error) {
            throw new IOException("redis " + args[0] + ": " + r);
        }
        return r;
    }

    private Object reply() throws IOException {
        int type = in.read();
        String line = line();
        switch (type) {
            case '+':
                return line;
            case '-':
                return new Error(line);
            case ':':
                return Long.parseLong(line);
            case '$': {
                int n = Integer.parseInt(line);
                if (n < 0) {
                    return null;
                }
                byte[] b = in.readNBytes(n + 2);
                if (b.length != n + 2) {
                    throw new EOFException("redis connection closed in a reply");
                }
                return new String(b, 0, n, StandardCharsets.UTF_8);
            }
            case '*': {
                int n = Integer.parseInt(line);
                if (n < 0) {
                    return null;
                }
                List<Object> items = new ArrayList<>(n);
                for (int i = 0; i < n; i++) {
                    items.add(reply());
                }
                return items;
            }
            case -1:
                throw new EOFException("redis connection closed");
            default:
                throw new IOException("unexpected redis reply type " + (char) type);
        }
    }

    private String line() throws IOException {
        StringBuilder b = new StringBuilder(16);
        while (true) {
            int c = in.read();
            if (c == -1) {
                throw new EOFException("redis connection closed");
            }
            if (c == '\r') {
                in.read();  // '\n'
                return b.toString();
            }
            b.append((char) c);
        }
    }

    @Override
    public void close() throws IOException {
        socket.close();
    }
}
