;; params: returns the params JSON it was given, byte for byte (checks the ABI's params encoding).
(module
  (memory (export "memory") 1)
  ;; Bump allocator: hands out len bytes after the previous allocation and grows memory
  ;; when needed; traps (unreachable) if memory cannot grow.
  (global $bump (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $pages i64)
    (local.set $ptr (global.get $bump))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $len))))
    (local.set $pages (i64.shr_u (i64.add (local.get $end) (i64.const 65535)) (i64.const 16)))
    (if (i64.gt_u (local.get $pages) (i64.extend_i32_u (memory.size)))
      (then
        (if (i32.eq
              (memory.grow (i32.wrap_i64 (i64.sub (local.get $pages) (i64.extend_i32_u (memory.size)))))
              (i32.const -1))
          (then unreachable))))
    (global.set $bump (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))
  ;; The ABI result: ptr in the high 32 bits, len in the low 32 bits.
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func (export "run") (param $in_ptr i32) (param $in_len i32) (param $params_ptr i32) (param $params_len i32) (result i64)
    (call $pack (local.get $params_ptr) (local.get $params_len))))
