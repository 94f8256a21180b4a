package dev.skewless.flink;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * A minimal Redis client for the sink: RESP2 commands written back to back (a pipeline), then their replies
 * read in order. Error replies are returned as {@link Error} values so a caller can react per command
 * (e.g. {@code NOSCRIPT}); a broken connection raises {@link IOException} and the job restarts from its
 * checkpoint (the writes are idempotent).
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
        socket = new Socket();
        socket.setTcpNoDelay(true);
        socket.setSoTimeout(timeoutMs);
        socket.connect(new InetSocketAddress(host, port), timeoutMs);
        out = new BufferedOutputStream(socket.getOutputStream(), 1 << 16);
        in = new BufferedInputStream(socket.getInputStream(), 1 << 16);
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
