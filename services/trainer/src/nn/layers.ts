import { tf } from './backend.js';

/**
 * 2-D convolution (NHWC, stride 1, valid padding) that can be trained on the wasm backend.
 *
 * The wasm backend has no `Conv2DBackpropFilter` kernel, so the filter gradient is written out
 * with kernels it does have: dW[i,j,c,o] = Σ_{n,h,w} x[n,h+i,w+j,c] · dy[n,h,w,o] is itself a
 * valid convolution of x (channels as batch, batch as channels) with dy (batch as input channels).
 */
export function conv2d(x: tf.Tensor4D, w: tf.Tensor4D, inputNeedsGradient: boolean): tf.Tensor4D {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, filter, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.GradSaveFunc];
    save([input, filter]);
    return {
      value: tf.conv2d(input, filter, 1, 'valid'),
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [sx, sw] = saved as [tf.Tensor4D, tf.Tensor4D];
        const g = dy as tf.Tensor4D;
        const dw = tf.tidy(() =>
          tf.transpose(tf.conv2d(tf.transpose(sx, [3, 1, 2, 0]), tf.transpose(g, [1, 2, 0, 3]), 1, 'valid'), [1, 2, 0, 3]),
        );
        const dx = inputNeedsGradient ? tf.conv2dTranspose(g, sw, sx.shape, 1, 'valid') : tf.zerosLike(sx);
        return [dx, dw];
      },
    };
  });
  return op(x, w);
}

export function dense(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  return tf.add(tf.matMul(x, w), b);
}
