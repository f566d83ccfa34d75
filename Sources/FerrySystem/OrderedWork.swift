import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// Runs `work` for items 0..<count on `threads` threads and hands the results to `body` in
/// order, on the calling thread, as soon as each one and all before it are done: a worker takes
/// the next item whenever it is free, so one slow item holds up only the items more than
/// `window` places after it (a fixed batch would idle every other thread until its slowest item
/// ended). At most `window` results wait to be handed over, which bounds memory.
///
/// When `body` throws, no new item starts; the items running end, and the error is rethrown.
public func inOrder<Value>(
    count: Int, threads: Int, window: Int, work: @escaping @Sendable (Int) -> Value,
    body: (Value) throws(FerryError) -> Void
) throws(FerryError) {
    precondition(threads > 0 && window > 0, "Ferry bug: \(threads) threads, window \(window)")
    guard count > 0 else { return }
    if threads == 1 || count == 1 {
        for item in 0..<count { try body(work(item)) }
        return
    }
    let queue = OrderedQueue<Value>(count: count, window: window)
    let group = DispatchGroup()
    for _ in 0..<min(threads, count) {
        DispatchQueue.global().async(group: group) {
            while let item = queue.claim() { queue.finish(item, work(item)) }
        }
    }
    defer {
        queue.stop()
        group.wait()
    }
    for item in 0..<count { try body(queue.take(item)) }
}

/// The shared state of ``inOrder(count:threads:window:work:body:)``: which item is next to start,
/// which is next to hand over, and the results in between, under one mutex.
private final class OrderedQueue<Value>: @unchecked Sendable {
    private let count: Int
    private let window: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var results: [Int: Value] = [:]
    private var nextToClaim = 0
    private var nextToTake = 0
    private var stopped = false

    init(count: Int, window: Int) {
        self.count = count
        self.window = window
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        changed.deallocate()
    }

    /// The next item to work on, once it is within the window; nil when all are claimed or stopped.
    func claim() -> Int? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !stopped && nextToClaim < count && nextToClaim >= nextToTake + window {
            pthread_cond_wait(changed, mutex)
        }
        guard !stopped && nextToClaim < count else { return nil }
        nextToClaim += 1
        return nextToClaim - 1
    }

    func finish(_ item: Int, _ value: Value) {
        pthread_mutex_lock(mutex)
        results[item] = value
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }

    /// Waits for `item`'s result (items are taken in order) and frees its place in the window.
    func take(_ item: Int) -> Value {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while results[item] == nil { pthread_cond_wait(changed, mutex) }
        nextToTake = item + 1
        pthread_cond_broadcast(changed)
        return results.removeValue(forKey: item)!
    }

    func stop() {
        pthread_mutex_lock(mutex)
        stopped = true
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }
}
